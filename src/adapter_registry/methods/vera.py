"""VeRA: shared frozen random projections, trained per-layer scaling vectors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from adapter_registry.methods.registry import register_method
from adapter_registry.methods.schema import MethodBlock, TargetModules

if TYPE_CHECKING:
    from peft import TaskType, VeraConfig


class VeraMethod(MethodBlock):
    """VeRA: one pair of frozen random matrices shared by all layers; only per-layer scaling vectors train."""

    type: Literal["vera"]
    r: int = Field(
        256, ge=1, le=4096, description="rank of the shared random projections (cheap: they are frozen)"
    )
    d_initial: float = Field(0.1, gt=0, description="initial value of the trainable vector d")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    projection_prng_key: int = Field(0, ge=0, description="seed of the shared random projections")
    save_projection: bool = Field(
        True, description="store the random projections in the adapter (bigger, but exactly reproducible)"
    )
    target_modules: TargetModules = None

    family: Literal["reparameterisation"] = Field("reparameterisation", exclude=True)
    mergeable: Literal[True] = Field(True, exclude=True)


def vera_config(method: Any, task_type: TaskType, total_steps: int | None = None) -> VeraConfig:
    """peft ``VeraConfig`` from a recipe's vera block."""
    from peft import VeraConfig

    return VeraConfig(
        task_type=task_type,
        r=method.r,
        d_initial=method.d_initial,
        vera_dropout=method.dropout,
        projection_prng_key=method.projection_prng_key,
        save_projection=method.save_projection,
        target_modules=method.target_modules,
    )


register_method(VeraMethod, vera_config)
