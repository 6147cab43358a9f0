"""LyCORIS methods in peft: LoHa (Hadamard product of low-rank factors) and LoKr (Kronecker product)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from adapter_registry.methods.registry import register_method
from adapter_registry.methods.schema import AlphaPattern, MethodBlock, RankPattern, TargetModules

if TYPE_CHECKING:
    from peft import LoHaConfig, LoKrConfig, TaskType


class LohaMethod(MethodBlock):
    """LoHa: the update is the Hadamard product of two low-rank products (LyCORIS)."""

    type: Literal["loha"]
    r: int = Field(8, ge=1, le=1024, description="rank of each of the two factors; higher: more capacity")
    alpha: float = Field(8, gt=0, description="scaling numerator (update scaled by alpha/r)")
    rank_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on each rank during training")
    module_dropout: float = Field(0.0, ge=0, lt=1, description="chance of skipping a whole adapted layer")
    target_modules: TargetModules = None
    rank_pattern: RankPattern = Field(default_factory=dict, description="per-module rank overrides")
    alpha_pattern: AlphaPattern = Field(default_factory=dict, description="per-module alpha overrides")

    family: Literal["reparameterisation"] = Field("reparameterisation", exclude=True)
    mergeable: Literal[True] = Field(True, exclude=True)


class LokrMethod(MethodBlock):
    """LoKr: the update is a Kronecker product of a small matrix and a (low-rank) matrix (LyCORIS)."""

    type: Literal["lokr"]
    r: int = Field(8, ge=1, le=1024, description="rank of the low-rank Kronecker factor")
    alpha: float = Field(8, gt=0, description="scaling numerator (update scaled by alpha/r)")
    rank_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on each rank during training")
    module_dropout: float = Field(0.0, ge=0, lt=1, description="chance of skipping a whole adapted layer")
    decompose_both: bool = Field(False, description="low-rank factorise the left Kronecker factor too")
    decompose_factor: int = Field(
        -1,
        description="split of the layer's dimensions into the Kronecker factors; -1: as square as possible",
    )
    target_modules: TargetModules = None
    rank_pattern: RankPattern = Field(default_factory=dict, description="per-module rank overrides")
    alpha_pattern: AlphaPattern = Field(default_factory=dict, description="per-module alpha overrides")

    family: Literal["reparameterisation"] = Field("reparameterisation", exclude=True)
    mergeable: Literal[True] = Field(True, exclude=True)

    @model_validator(mode="after")
    def _factor(self) -> LokrMethod:
        if self.decompose_factor == 0 or self.decompose_factor < -1:
            raise ValueError(
                f"decompose_factor must be -1 (automatic) or a positive integer, got {self.decompose_factor}"
            )
        return self


def loha_config(method: Any, task_type: TaskType, total_steps: int | None = None) -> LoHaConfig:
    """peft ``LoHaConfig`` from a recipe's loha block."""
    from peft import LoHaConfig

    return LoHaConfig(
        task_type=task_type,
        r=method.r,
        alpha=method.alpha,
        rank_dropout=method.rank_dropout,
        module_dropout=method.module_dropout,
        target_modules=method.target_modules,
        rank_pattern=dict(method.rank_pattern),
        alpha_pattern=dict(method.alpha_pattern),
    )


def lokr_config(method: Any, task_type: TaskType, total_steps: int | None = None) -> LoKrConfig:
    """peft ``LoKrConfig`` from a recipe's lokr block."""
    from peft import LoKrConfig

    return LoKrConfig(
        task_type=task_type,
        r=method.r,
        alpha=method.alpha,
        rank_dropout=method.rank_dropout,
        module_dropout=method.module_dropout,
        decompose_both=method.decompose_both,
        decompose_factor=method.decompose_factor,
        target_modules=method.target_modules,
        rank_pattern=dict(method.rank_pattern),
        alpha_pattern=dict(method.alpha_pattern),
    )


register_method(LohaMethod, loha_config)
register_method(LokrMethod, lokr_config)
