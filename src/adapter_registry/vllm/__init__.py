"""vLLM as the GPU data plane, with this project as its control plane.

- ``rules``: what vLLM loads as a LoRA adapter, as data with vLLM's own words and sources (``compat --engine
  vllm`` and ``export`` both apply them);
- ``export``: a registered version as a folder vLLM loads as it is (``adapter-registry export --format vllm``);
- ``request_body``: a request body that asks vLLM what evaluation asked the adapter (the serving contract's prompt,
  budget and closed answer set as vLLM's structured-output choice);
- ``resolver``: the registry side of the LoRA resolver plugin (``NAME@STAGE``, ``NAME/VERSION`` or a tenant ->
  the attested version's files, pulled sha256-checked into a cache keyed by digest) and the plugin vLLM loads
  through its ``vllm.general_plugins`` entry point;
- ``sync``: ``adapter-registry vllm-sync``, loading and unloading digest-named adapters on running vLLM servers
  through their ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` endpoints.

Nothing here imports vLLM except the plugin's ``register`` function (run by vLLM itself): the package is used and
tested on machines without vLLM or a GPU.
"""
