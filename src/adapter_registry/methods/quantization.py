"""bitsandbytes configs for quantised bases (QLoRA). 4-bit and 8-bit both run on CPU with bitsandbytes 0.50."""

from __future__ import annotations

from typing import Any

import torch
from transformers import BitsAndBytesConfig


def quantization_config(method: Any) -> BitsAndBytesConfig | None:
    """The BitsAndBytesConfig a method asks for, or None for a full-precision base."""
    bits = getattr(method, "bits", None)
    if bits is None:
        return None
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=method.quant_type,
        bnb_4bit_use_double_quant=method.double_quant,
        bnb_4bit_compute_dtype=torch.float32,
    )


def is_quantized(method: Any) -> bool:
    return getattr(method, "bits", None) is not None
