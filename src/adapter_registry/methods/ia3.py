"""IA³: learned vectors rescale keys, values and the feed-forward input."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from adapter_registry.methods.registry import register_method
from adapter_registry.methods.schema import MethodBlock, ModuleNames

if TYPE_CHECKING:
    from peft import IA3Config, TaskType


class Ia3Method(MethodBlock):
    """IA³: learned vectors rescale the targeted activations (keys, values and the FFN input)."""

    type: Literal["ia3"]
    target_modules: ModuleNames | None = Field(
        None,
        description="modules whose output (or, for feedforward_modules, input) is rescaled; "
        "null: peft's default for the architecture (keys, values, FFN down projection)",
    )
    feedforward_modules: ModuleNames | None = Field(
        None, description="the subset of target_modules whose input is rescaled (the FFN's down projection)"
    )

    family: Literal["additive"] = Field("additive", exclude=True)
    mergeable: Literal[True] = Field(True, exclude=True)

    @model_validator(mode="after")
    def _feedforward_subset(self) -> Ia3Method:
        if (self.target_modules is None) != (self.feedforward_modules is None):
            raise ValueError(
                "give both target_modules and feedforward_modules, or neither (peft's default for the architecture)"
            )
        extra = sorted(set(self.feedforward_modules or ()) - set(self.target_modules or ()))
        if extra:
            raise ValueError(f"feedforward_modules {extra} are not in target_modules; add them there too")
        return self


def ia3_config(method: Any, task_type: TaskType, total_steps: int | None = None) -> IA3Config:
    """peft ``IA3Config`` from a recipe's ia3 block (null modules: peft's default for the architecture)."""
    from peft import IA3Config

    return IA3Config(
        task_type=task_type,
        target_modules=method.target_modules,
        feedforward_modules=method.feedforward_modules,
    )


register_method(Ia3Method, ia3_config)
