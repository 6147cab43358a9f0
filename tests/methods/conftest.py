"""Fixtures of the method tests: tiny random bases saved once per session, and a ``Run`` per task on them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from adapter_registry.methods.quantization import quantization_config

from .tiny import CAUSAL, CLASSIFY, TINY_BERT, TINY_LLAMA, Run

WIDE = {"hidden_size": 64, "intermediate_size": 128}  # for 4-bit: bitsandbytes quantises in blocks of 64


@pytest.fixture(scope="session")
def base_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random bases saved as Hugging Face folders, one per task."""
    root = tmp_path_factory.mktemp("bases")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).save_pretrained(root / "llama")
    torch.manual_seed(0)
    BertModel(BertConfig(**TINY_BERT)).save_pretrained(root / "bert")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, **WIDE})).save_pretrained(root / "llama_wide")
    return {CAUSAL: root / "llama", CLASSIFY: root / "bert", "wide": root / "llama_wide"}


@pytest.fixture
def make_run(base_dirs: dict[str, Path]) -> Callable[..., Run]:
    def make(task: str, method: Any = None) -> Run:
        quantization = quantization_config(method) if method is not None else None
        wide = getattr(method, "bits", None) == 4  # bitsandbytes' CPU 4-bit kernel needs in_features >= 64
        return Run(task, base_dirs["wide" if wide else task], quantization)

    return make
