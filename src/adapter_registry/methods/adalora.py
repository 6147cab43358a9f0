"""AdaLoRA: SVD-shaped LoRA whose ranks are re-allocated during training (``update_and_allocate`` per step)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from adapter_registry.methods.registry import register_method
from adapter_registry.methods.schema import MethodBlock, TargetModules

if TYPE_CHECKING:
    from peft import AdaLoraConfig, PeftModel, TaskType


class AdaLoraMethod(MethodBlock):
    """AdaLoRA: SVD-shaped LoRA whose rank budget is pruned from init_r to target_r during training.

    The schedule is in shares of the run's total steps, so it holds for any length of run: ranks stay at
    init_r for the first ``warmup_share``, shrink towards ``target_r`` (every ``allocate_every`` steps), and
    stay fixed for the last ``final_share``.
    """

    type: Literal["adalora"]
    init_r: int = Field(12, ge=1, le=1024, description="starting rank of every adapted layer")
    target_r: int = Field(8, ge=1, le=1024, description="average rank left after pruning (the budget)")
    alpha: float = Field(32, gt=0, description="scaling numerator (update scaled by alpha/init_r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: TargetModules = None
    warmup_share: float = Field(
        0.1, ge=0, lt=1, description="share of steps trained at init_r before pruning starts (peft tinit)"
    )
    final_share: float = Field(
        0.2, ge=0, lt=1, description="share of final steps with the ranks frozen (peft tfinal)"
    )
    allocate_every: int = Field(1, ge=1, description="steps between two rank re-allocations (peft deltaT)")
    beta1: float = Field(0.85, gt=0, lt=1, description="EMA factor of the importance (sensitivity) scores")
    beta2: float = Field(0.85, gt=0, lt=1, description="EMA factor of the importance uncertainty")
    orth_reg_weight: float = Field(
        0.5, ge=0, description="weight of the orthogonality penalty on P and Q (added to a causal LM's loss)"
    )

    family: Literal["reparameterisation"] = Field("reparameterisation", exclude=True)
    mergeable: Literal[True] = Field(True, exclude=True)

    @model_validator(mode="after")
    def _schedule(self) -> AdaLoraMethod:
        if self.target_r > self.init_r:
            raise ValueError(
                f"target_r ({self.target_r}) must not exceed init_r ({self.init_r}): AdaLoRA only prunes; "
                "raise init_r or lower target_r"
            )
        if self.warmup_share + self.final_share >= 1:
            raise ValueError(
                f"warmup_share + final_share = {self.warmup_share + self.final_share:g} leaves no steps to "
                "re-allocate ranks; keep their sum below 1 (e.g. warmup_share: 0.1, final_share: 0.2)"
            )
        return self


def adalora_config(method: Any, task_type: TaskType, total_steps: int | None) -> AdaLoraConfig:
    """peft ``AdaLoraConfig``; the schedule's shares become step counts of a run of ``total_steps``."""
    from peft import AdaLoraConfig

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


register_method(AdaLoraMethod, adalora_config, step_callback=allocate_ranks)
