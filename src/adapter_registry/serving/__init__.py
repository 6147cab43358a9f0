"""Serving many adapters on one base model: ``pool`` (load, switch, mixed batches), ``sync`` (the pool follows the
registry), ``batcher`` (concurrent requests into mixed batches) and ``app`` (the FastAPI routes).

``app`` is imported by nothing in the package; ``adapter-registry serve`` imports it lazily.
"""
