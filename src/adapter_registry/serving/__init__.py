"""Serving many adapters on one base model: ``pool`` (load, switch, mixed batches; what it takes and gives in
``entities``, an adapter checked before it loads in ``loading``, a row's hooks while it generates in
``row_hooks``), ``residency`` (at most K resident, cold loads), ``sync`` (the pool follows the registry through a
local cache), ``batcher`` (concurrent requests into mixed batches, with admission control), ``service`` (one
request's course), ``metrics``, and the routes: ``app`` (FastAPI) and ``openai_api`` (the OpenAI API).

``app`` is imported by nothing in the package; ``adapter-registry serve`` imports it lazily.
"""
