"""PEFT methods: one module per family, each registering a builder; ``build_peft_config`` is the only way in.

A builder turns a recipe's ``method:`` block into a peft config for a task. Registration fails loudly on a
duplicate name, as peft's own ``register_peft_method`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from peft import PeftConfig, TaskType

TASK_TYPES = {"causal_lm_sft": TaskType.CAUSAL_LM, "sequence_classification": TaskType.FEATURE_EXTRACTION}


@dataclass(frozen=True)
class MethodBuilder:
    name: str
    family: str  # additive | selective | reparameterisation | hybrid
    mergeable: bool
    build: Callable[[Any, TaskType], PeftConfig]


_BUILDERS: dict[str, MethodBuilder] = {}


def register_method(
    name: str, family: str, mergeable: bool
) -> Callable[[Callable[[Any, TaskType], PeftConfig]], Any]:
    """Decorator: register ``build(method_spec, task_type) -> PeftConfig`` under ``name``."""

    def decorate(build: Callable[[Any, TaskType], PeftConfig]) -> Callable[[Any, TaskType], PeftConfig]:
        if name in _BUILDERS:
            raise ValueError(
                f"PEFT method {name!r} is already registered by {_BUILDERS[name].build.__module__}"
            )
        _BUILDERS[name] = MethodBuilder(name, family, mergeable, build)
        return build

    return decorate


def method_builder(name: str) -> MethodBuilder:
    _load_builtin_methods()
    try:
        return _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown PEFT method {name!r}; known: {', '.join(sorted(_BUILDERS))}") from None


def build_peft_config(method: Any, task: str) -> PeftConfig:
    """The peft config for a recipe's ``method:`` block and task type."""
    return method_builder(method.type).build(method, TASK_TYPES[task])


def _load_builtin_methods() -> None:
    from adapter_registry.methods import lora  # noqa: F401  (registers itself)
