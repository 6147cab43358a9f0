"""LyCORIS methods in peft: LoHa (Hadamard product of low-rank factors) and LoKr (Kronecker product)."""

from __future__ import annotations

from typing import Any

from peft import LoHaConfig, LoKrConfig, TaskType

from adapter_registry.methods import register_method


@register_method("loha", family="reparameterisation", mergeable=True)
def loha_config(method: Any, task_type: TaskType, total_steps: int | None = None) -> LoHaConfig:
    """peft ``LoHaConfig`` from a recipe's loha block."""
    return LoHaConfig(
        task_type=task_type,
        r=method.r,
        alpha=method.alpha,
        rank_dropout=method.rank_dropout,
        module_dropout=method.module_dropout,
        target_modules=method.target_modules,
        rank_pattern=dict(method.rank_pattern),
        alpha_pattern=dict(method.alpha_pattern),
    )


@register_method("lokr", family="reparameterisation", mergeable=True)
def lokr_config(method: Any, task_type: TaskType, total_steps: int | None = None) -> LoKrConfig:
    """peft ``LoKrConfig`` from a recipe's lokr block."""
    return LoKrConfig(
        task_type=task_type,
        r=method.r,
        alpha=method.alpha,
        rank_dropout=method.rank_dropout,
        module_dropout=method.module_dropout,
        decompose_both=method.decompose_both,
        decompose_factor=method.decompose_factor,
        target_modules=method.target_modules,
        rank_pattern=dict(method.rank_pattern),
        alpha_pattern=dict(method.alpha_pattern),
    )
