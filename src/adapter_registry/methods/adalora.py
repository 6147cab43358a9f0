"""AdaLoRA: SVD-shaped LoRA whose ranks are re-allocated during training (``update_and_allocate`` per step)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peft import AdaLoraConfig, PeftModel, TaskType

from adapter_registry.methods import register_method


def adalora_config(method: Any, task_type: TaskType, total_steps: int | None) -> AdaLoraConfig:
    """peft ``AdaLoraConfig``; the schedule's shares become step counts of a run of ``total_steps``."""
    if total_steps is None:
        raise ValueError(
            "adalora needs the run's number of optimiser steps for its rank schedule: "
            "call build_peft_config(method, task, total_steps=N)"
        )
    return AdaLoraConfig(
        task_type=task_type,
        init_r=method.init_r,
        target_r=method.target_r,
        lora_alpha=method.alpha,
        lora_dropout=method.dropout,
        target_modules=method.target_modules,
        total_step=total_steps,
        tinit=int(method.warmup_share * total_steps),
        tfinal=int(method.final_share * total_steps),
        deltaT=method.allocate_every,
        beta1=method.beta1,
        beta2=method.beta2,
        orth_reg_weight=method.orth_reg_weight,
    )


def allocate_ranks(method: Any, model: PeftModel) -> Callable[[int], None]:
    """``on_step(step)``: AdaLoRA's importance update and rank re-allocation (reads the gradients)."""
    tuner: Any = model.base_model  # an AdaLoraModel

    def on_step(step: int) -> None:
        tuner.update_and_allocate(step)

    return on_step


register_method("adalora", family="reparameterisation", mergeable=True, step_callback=allocate_ranks)(
    adalora_config
)
