"""LoRA and QLoRA (LoRA on a bitsandbytes-quantised base: the quantisation itself is in ``quantization``)."""

from __future__ import annotations

from typing import Any

from peft import LoraConfig, TaskType

from adapter_registry.methods import register_method


def lora_config(method: Any, task_type: TaskType) -> LoraConfig:
    """peft ``LoraConfig`` from a recipe's lora/qlora block."""
    return LoraConfig(
        task_type=task_type,
        r=method.r,
        lora_alpha=method.alpha,
        lora_dropout=method.dropout,
        target_modules=method.target_modules,
        use_dora=method.use_dora,
        use_rslora=method.use_rslora,
        rank_pattern=dict(method.rank_pattern),
        alpha_pattern=dict(method.alpha_pattern),
        bias="none",
    )


register_method("lora", family="reparameterisation", mergeable=True)(lora_config)
register_method("qlora", family="reparameterisation", mergeable=True)(lora_config)
