"""Bottleneck adapters (Houlsby, Pfeiffer): not available here; ``type: bottleneck`` is an error that says why.

Not registered (nothing can be built): ``methods/__init__.py`` adds this model to the recipe's ``MethodSpec``
after the registered methods, so that the block is explained instead of being an unknown type.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from adapter_registry.methods.schema import MethodBlock


class BottleneckMethod(MethodBlock):
    """Bottleneck adapters (Houlsby, Pfeiffer): not available here; the block is an error that says why."""

    type: Literal["bottleneck"]

    family: Literal["additive"] = Field("additive", exclude=True)
    mergeable: Literal[False] = Field(False, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _unavailable(cls, data: Any) -> Any:
        raise ValueError(
            "bottleneck adapters (Houlsby/Pfeiffer) are not available: peft 0.21 has none, and the `adapters` "
            "library (1.3.0) requires transformers ~=4.57.6, which cannot be installed beside our "
            "transformers 5.23. Fix: use an additive method (ia3, prefix_tuning, llama_adapter) or lora; "
            "see docs/methods.md"
        )
