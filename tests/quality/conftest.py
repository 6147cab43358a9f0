"""Fixtures of the quality tests: tiny random models built from a config in tmp_path.

``benchmarks`` is importable from here because tests/conftest.py puts the repository root on ``sys.path``.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, object]:
    """A 2-layer random Llama and SmolLM2's tokenizer (the offline base's), saved and reloaded from tmp_path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from adapter_registry.bases.resolve import resolve_reference
    from adapter_registry.training.models import load_tokenizer

    tokenizer = load_tokenizer(resolve_reference("smollm2-135m-instruct").path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    return model, tokenizer
