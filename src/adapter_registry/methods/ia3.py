"""IA³: learned vectors rescale keys, values and the feed-forward input."""

from __future__ import annotations

from typing import Any

from peft import IA3Config, TaskType

from adapter_registry.methods import register_method


@register_method("ia3", family="additive", mergeable=True)
def ia3_config(method: Any, task_type: TaskType, total_steps: int | None = None) -> IA3Config:
    """peft ``IA3Config`` from a recipe's ia3 block (null modules: peft's default for the architecture)."""
    return IA3Config(
        task_type=task_type,
        target_modules=method.target_modules,
        feedforward_modules=method.feedforward_modules,
    )
