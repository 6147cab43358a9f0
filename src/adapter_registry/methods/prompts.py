"""Soft prompts: prefix tuning, prompt tuning, P-tuning and LLaMA-Adapter (peft's adaption prompt).

None of them can be merged: their parameters are extra tokens or key/value prefixes, not weight updates.
"""

from __future__ import annotations

from typing import Any

from peft import (
    AdaptionPromptConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
)

from adapter_registry.methods import register_method


@register_method("prefix_tuning", family="additive", mergeable=False)
def prefix_tuning_config(
    method: Any, task_type: TaskType, total_steps: int | None = None
) -> PrefixTuningConfig:
    """peft ``PrefixTuningConfig`` from a recipe's prefix_tuning block."""
    return PrefixTuningConfig(
        task_type=task_type,
        num_virtual_tokens=method.num_virtual_tokens,
        prefix_projection=method.prefix_projection,
        encoder_hidden_size=method.encoder_hidden_size,
    )


@register_method("prompt_tuning", family="additive", mergeable=False)
def prompt_tuning_config(
    method: Any, task_type: TaskType, total_steps: int | None = None
) -> PromptTuningConfig:
    """peft ``PromptTuningConfig`` from a recipe's prompt_tuning block."""
    return PromptTuningConfig(
        task_type=task_type,
        num_virtual_tokens=method.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit[method.init.upper()],
    )


@register_method("p_tuning", family="additive", mergeable=False)
def p_tuning_config(method: Any, task_type: TaskType, total_steps: int | None = None) -> PromptEncoderConfig:
    """peft ``PromptEncoderConfig`` from a recipe's p_tuning block."""
    return PromptEncoderConfig(
        task_type=task_type,
        num_virtual_tokens=method.num_virtual_tokens,
        encoder_reparameterization_type=PromptEncoderReparameterizationType[method.encoder_type.upper()],
        encoder_hidden_size=method.encoder_hidden_size,
        encoder_num_layers=method.encoder_num_layers,
        encoder_dropout=method.encoder_dropout,
    )


@register_method("llama_adapter", family="additive", mergeable=False)
def llama_adapter_config(
    method: Any, task_type: TaskType, total_steps: int | None = None
) -> AdaptionPromptConfig:
    """peft ``AdaptionPromptConfig`` from a recipe's llama_adapter block (Llama-architecture causal LMs)."""
    return AdaptionPromptConfig(
        task_type=task_type, adapter_len=method.adapter_len, adapter_layers=method.adapter_layers
    )
