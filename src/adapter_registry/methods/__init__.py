"""PEFT methods: one module per family, each registering a builder; ``build_peft_config`` is the only way in.

A builder turns a recipe's ``method:`` block into a peft config for a task. Registration fails loudly on a
duplicate name, as peft's own ``register_peft_method`` does. The training loop uses three functions::

    config = build_peft_config(recipe.method, recipe.task.type, total_steps=max_steps)
    model = peft.get_peft_model(base, config)
    optimizer = optimizer_for(recipe.method, model, lr, weight_decay, head_parameters=head, head_lr=head_lr)
    on_step = step_callback(recipe.method, model)
    ...
    loss.backward(); clip; optimizer.step(); on_step and on_step(step); scheduler.step(); optimizer.zero_grad()

``optimizer_for`` returns None for methods trained with the loop's default AdamW; ``step_callback`` returns None
for methods that need nothing after a step. Both take the ``PeftModel`` that ``get_peft_model`` returned (for
classification: the peft-wrapped encoder, not the pooled classifier around it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftConfig, PeftModel, TaskType
from torch import nn

TASK_TYPES = {"causal_lm_sft": TaskType.CAUSAL_LM, "sequence_classification": TaskType.FEATURE_EXTRACTION}
FAMILIES = ("additive", "selective", "reparameterisation", "hybrid")

Build = Callable[[Any, TaskType, int | None], PeftConfig]
"""``build(method_spec, task_type, total_steps) -> PeftConfig``."""
MakeOptimizer = Callable[[Any, PeftModel, float, float, list[dict[str, Any]]], torch.optim.Optimizer]
"""``make(method_spec, model, lr, weight_decay, extra_groups) -> Optimizer``."""
MakeStepCallback = Callable[[Any, PeftModel], Callable[[int], None]]
"""``make(method_spec, model) -> on_step(step)``."""


@dataclass(frozen=True)
class MethodBuilder:
    name: str
    family: str  # additive | selective | reparameterisation | hybrid
    mergeable: bool
    build: Build
    optimizer: MakeOptimizer | None = None
    step_callback: MakeStepCallback | None = None


_BUILDERS: dict[str, MethodBuilder] = {}


def register_method(
    name: str,
    family: str,
    mergeable: bool,
    *,
    optimizer: MakeOptimizer | None = None,
    step_callback: MakeStepCallback | None = None,
) -> Callable[[Build], Build]:
    """Decorator: register ``build(method_spec, task_type, total_steps) -> PeftConfig`` under ``name``.

    ``optimizer`` and ``step_callback`` are for methods that train differently (LoRA-FA, AdaLoRA).
    """
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} of {name!r} is not one of {FAMILIES}")

    def decorate(build: Build) -> Build:
        if name in _BUILDERS:
            raise ValueError(
                f"PEFT method {name!r} is already registered by {_BUILDERS[name].build.__module__}"
            )
        _BUILDERS[name] = MethodBuilder(name, family, mergeable, build, optimizer, step_callback)
        return build

    return decorate


def method_builder(name: str) -> MethodBuilder:
    """The registered builder of a method type, with its ``family`` and ``mergeable`` facts."""
    _load_builtin_methods()
    try:
        return _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown PEFT method {name!r}; known: {', '.join(sorted(_BUILDERS))}") from None


def build_peft_config(method: Any, task: str, total_steps: int | None = None) -> PeftConfig:
    """The peft config for a recipe's ``method:`` block and task type (``causal_lm_sft`` or
    ``sequence_classification``).

    ``total_steps`` is the number of optimiser steps the loop will run; AdaLoRA needs it for its rank schedule
    (a ValueError says so when it is missing), the other methods ignore it. The method/task pair must already
    be valid (the recipe schema checks ``method.task_problem(task)``).
    """
    if total_steps is not None and total_steps < 1:
        raise ValueError(f"total_steps must be a positive number of optimiser steps, got {total_steps}")
    return method_builder(method.type).build(method, TASK_TYPES[task], total_steps)


def optimizer_for(
    method: Any,
    model: PeftModel,
    lr: float,
    weight_decay: float,
    *,
    head_parameters: Sequence[nn.Parameter] = (),
    head_lr: float | None = None,
) -> torch.optim.Optimizer | None:
    """The optimizer a method must train with, or None: train with the loop's default AdamW.

    Call it once, after ``get_peft_model`` and before the first step, with the ``PeftModel``; it may freeze
    parameters (LoRA-FA freezes every ``lora_A``), so collect trainable parameters only after it. Parameters
    outside the PeftModel (a classification head) go in ``head_parameters``, trained at ``head_lr``
    (default ``lr``) with plain AdamW updates inside the returned optimizer.
    """
    make = method_builder(method.type).optimizer
    if make is None:
        return None
    extra = []
    if head_parameters:
        params = list(head_parameters)
        extra.append({
            "params": params, "lr": head_lr or lr, "weight_decay": weight_decay, "betas": (0.9, 0.999),
            "names": [f"head.{i}" for i in range(len(params))], "scaling_factors": [None] * len(params),
        })  # fmt: skip
    return make(method, model, lr, weight_decay, extra)


def step_callback(method: Any, model: PeftModel) -> Callable[[int], None] | None:
    """A function ``on_step(step)`` to call after every ``optimizer.step()`` and before ``zero_grad()``
    (it reads the gradients), with ``step`` counting optimiser steps from 1; None when the method needs none.

    AdaLoRA's re-allocates ranks there (``model.base_model.update_and_allocate(step)``).
    """
    make = method_builder(method.type).step_callback
    return None if make is None else make(method, model)


def _load_builtin_methods() -> None:
    from adapter_registry.methods import (  # noqa: F401  (each registers itself)
        adalora,
        ia3,
        lora,
        lycoris,
        oft,
        prompts,
        vera,
    )
