"""PEFT methods: one module per method (or family of methods), each holding its recipe ``method:`` model, its
fixed facts (``family``, ``mergeable``, stated once on the model), its peft builder and its registration.

- ``schema``: what every ``method:`` model shares (:class:`MethodBlock`, the module-list types);
- ``registry``: ``register_method`` (fails loudly on a duplicate type), ``method_builder`` and the training
  loop's way in: ``build_peft_config``, ``optimizer_for``, ``step_callback`` (see its docstring);
- ``lora``, ``adalora``, ``lycoris``, ``vera``, ``oft``, ``ia3``, ``prompts``: the methods, each registering
  itself when imported; ``bottleneck``: an unavailable type whose block is an error that says why;
- ``quantization``: bitsandbytes configs for QLoRA's quantised base (imported by the training and merge code).

This package imports every method module and assembles :data:`MethodSpec`, the recipe's ``method:`` block,
from the registered models; ``recipes.schema`` imports it. Neither peft nor torch is imported here: builders
import peft when they run.

Adding a method is one new module, ``methods/<m>.py`` (its model on ``MethodBlock``, its builder,
``register_method(Model, builder)``), plus its line in the import block below.
"""

from __future__ import annotations

import operator
from functools import reduce
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator, Field

# Each method module registers itself on import. The order here is the order of the ``MethodSpec`` union, which
# an unknown ``type:`` error lists to the user.
# isort: off
from adapter_registry.methods import (  # noqa: F401
    lora,
    adalora,
    lycoris,
    vera,
    oft,
    ia3,
    prompts,
)

# isort: on
from adapter_registry.methods.bottleneck import BottleneckMethod
from adapter_registry.methods.registry import (
    FAMILIES,
    TASK_TYPES,
    MethodBuilder,
    build_peft_config,
    method_builder,
    optimizer_for,
    register_method,
    registered,
    step_callback,
)
from adapter_registry.methods.schema import MethodBlock


def _one_method(value: Any) -> Any:
    if isinstance(value, list):
        kinds = [v.get("type", "?") if isinstance(v, dict) else v for v in value]
        raise ValueError(
            f"one method per recipe, got a list {kinds}: mixing PEFT methods in one adapter is not supported "
            "(their interactions are a known trap, and a mixed adapter cannot be merged or served like one); "
            "write `method: {type: ...}` with a single method, or train one recipe per method"
        )
    return value


SCHEMAS: tuple[type[MethodBlock], ...] = (*(b.schema for b in registered()), BottleneckMethod)
"""Every ``method:`` model a recipe may name: the registered methods, then ``bottleneck`` (only an error)."""

if TYPE_CHECKING:  # the type checker sees what every member shares: type, family, mergeable, task_problem
    MethodSpec = MethodBlock
else:
    MethodSpec = Annotated[
        reduce(operator.or_, SCHEMAS), Field(discriminator="type"), BeforeValidator(_one_method)
    ]
    """A recipe's ``method:`` block: exactly one of the models in ``SCHEMAS``, chosen by ``type``."""

METHOD_TYPES: tuple[str, ...] = tuple(b.name for b in registered())
"""The method types a recipe can train (``bottleneck`` is only an explanatory error)."""

__all__ = [
    "FAMILIES",
    "METHOD_TYPES",
    "SCHEMAS",
    "TASK_TYPES",
    "MethodBlock",
    "MethodBuilder",
    "MethodSpec",
    "build_peft_config",
    "method_builder",
    "optimizer_for",
    "register_method",
    "registered",
    "step_callback",
]
