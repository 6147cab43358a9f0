"""The registry of PEFT methods, and the training loop's way in: ``build_peft_config``, ``optimizer_for``,
``step_callback``.

Each method module registers its ``method:`` model and its builder here, in one call::

    register_method(VeraMethod, vera_config)            # build(method, task_type, total_steps) -> PeftConfig

The model states the method's ``type``, ``family`` and ``mergeable`` (once); the registry reads them from it.
Registration fails loudly on a duplicate type, as peft's own ``register_peft_method`` does. This module imports
no method module: ``methods/__init__.py`` imports every one (so they are all registered once the package is
imported) and assembles the recipe's ``MethodSpec`` from the registered models.

The training loop uses three functions::

    config = build_peft_config(recipe.method, recipe.task.type, total_steps=max_steps)
    model = peft.get_peft_model(base, config)
    optimizer = optimizer_for(recipe.method, model, lr, weight_decay, head_parameters=head, head_lr=head_lr)
    on_step = step_callback(recipe.method, model)
    ...
    loss.backward(); clip; optimizer.step(); on_step and on_step(step); scheduler.step(); optimizer.zero_grad()

``optimizer_for`` returns None for methods trained with the loop's default AdamW; ``step_callback`` returns None
for methods that need nothing after a step. Both take the ``PeftModel`` that ``get_peft_model`` returned (for
classification: the peft-wrapped encoder, not the pooled classifier around it).

peft and torch are imported by the builders when they run, never here: the recipe schema imports this package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

from adapter_registry.methods.schema import MethodBlock

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig, PeftModel, TaskType
    from torch import nn

    Build = Callable[[Any, TaskType, int | None], PeftConfig]
    """``build(method_spec, task_type, total_steps) -> PeftConfig``."""
    MakeOptimizer = Callable[[Any, PeftModel, float, float, list[dict[str, Any]]], torch.optim.Optimizer]
    """``make(method_spec, model, lr, weight_decay, extra_groups) -> Optimizer``."""
    MakeStepCallback = Callable[[Any, PeftModel], Callable[[int], None]]
    """``make(method_spec, model) -> on_step(step)``."""

TASK_TYPES = {"causal_lm_sft": "CAUSAL_LM", "sequence_classification": "FEATURE_EXTRACTION"}
"""The peft ``TaskType`` (by name) a recipe task trains as."""

FAMILIES = ("additive", "selective", "reparameterisation", "hybrid")
"""A method's ``family``, following the field's taxonomy:

- ``additive``: new parameters beside the frozen model (soft prompts, prefixes, adaption prompts, IA³,
  bottleneck adapters);
- ``selective``: a chosen subset of the model's own weights is trained (none shipped yet);
- ``reparameterisation``: a low-rank or structured update of existing weights (LoRA and its relatives);
- ``hybrid``: a combination of the above (none shipped yet).
"""


@dataclass(frozen=True)
class MethodBuilder:
    """A registered method: its ``method:`` model (which states type, family and mergeable) and how it trains."""

    schema: type[MethodBlock]
    build: Build
    optimizer: MakeOptimizer | None = None
    step_callback: MakeStepCallback | None = None

    @property
    def name(self) -> str:
        """The method's ``type`` in a recipe."""
        return method_type(self.schema)

    @property
    def family(self) -> str:
        """additive | selective | reparameterisation | hybrid (see ``FAMILIES``)."""
        return str(self.schema.model_fields["family"].default)

    @property
    def mergeable(self) -> bool:
        """Whether the trained adapter can be folded into the base weights."""
        return bool(self.schema.model_fields["mergeable"].default)


_BUILDERS: dict[str, MethodBuilder] = {}


def method_type(schema: type[MethodBlock]) -> str:
    """The ``type`` a ``method:`` model is chosen by (its ``type: Literal[NAME]`` field)."""
    field = schema.model_fields.get("type")
    names = get_args(field.annotation) if field is not None else ()
    if len(names) != 1 or not isinstance(names[0], str):
        raise ValueError(f"{schema.__name__} must state its recipe type as one name: `type: Literal['NAME']`")
    return names[0]


def register_method(
    schema: type[MethodBlock],
    build: Build,
    *,
    optimizer: MakeOptimizer | None = None,
    step_callback: MakeStepCallback | None = None,
) -> None:
    """Register a method: its ``method:`` model and ``build(method_spec, task_type, total_steps) -> PeftConfig``.

    ``optimizer`` and ``step_callback`` are for methods that train differently (LoRA-FA, AdaLoRA). The model's
    ``type`` must be new, and it must state ``family`` (one of ``FAMILIES``) and ``mergeable``.
    """
    name = method_type(schema)
    if name in _BUILDERS:
        raise ValueError(
            f"PEFT method {name!r} is already registered by {_BUILDERS[name].schema.__module__}; "
            "give the new method's model another `type`"
        )
    facts = {k: schema.model_fields[k] for k in ("family", "mergeable") if k in schema.model_fields}
    if len(facts) != 2 or not all(f.exclude for f in facts.values()):
        raise ValueError(
            f"{schema.__name__} must state its facts as excluded fields, e.g. "
            "`family: Literal['additive'] = Field('additive', exclude=True)` and "
            "`mergeable: Literal[False] = Field(False, exclude=True)`"
        )
    family = facts["family"].default
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} of {name!r} is not one of {FAMILIES}")
    _BUILDERS[name] = MethodBuilder(schema, build, optimizer, step_callback)


def registered() -> tuple[MethodBuilder, ...]:
    """Every registered method, in the order of registration."""
    return tuple(_BUILDERS.values())


def method_builder(name: str) -> MethodBuilder:
    """The registered builder of a method type, with its ``family`` and ``mergeable`` facts."""
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
    from peft import TaskType

    if total_steps is not None and total_steps < 1:
        raise ValueError(f"total_steps must be a positive number of optimiser steps, got {total_steps}")
    return method_builder(method.type).build(method, TaskType[TASK_TYPES[task]], total_steps)


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
