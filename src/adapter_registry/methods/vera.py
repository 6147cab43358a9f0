"""VeRA: shared frozen random projections, trained per-layer scaling vectors."""

from __future__ import annotations

from typing import Any

from peft import TaskType, VeraConfig

from adapter_registry.methods import register_method


@register_method("vera", family="reparameterisation", mergeable=True)
def vera_config(method: Any, task_type: TaskType, total_steps: int | None = None) -> VeraConfig:
    """peft ``VeraConfig`` from a recipe's vera block."""
    return VeraConfig(
        task_type=task_type,
        r=method.r,
        d_initial=method.d_initial,
        vera_dropout=method.dropout,
        projection_prng_key=method.projection_prng_key,
        save_projection=method.save_projection,
        target_modules=method.target_modules,
    )
