"""Serving many adapters on one base model: ``pool`` (load, switch, mixed batches) and ``app`` (FastAPI).

``app`` is imported by nothing in the package; ``adapter-registry serve`` imports it lazily.
"""
