"""OFT: a learned block-diagonal orthogonal matrix multiplies the targeted weights."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from adapter_registry.methods.registry import register_method
from adapter_registry.methods.schema import MethodBlock, TargetModules

if TYPE_CHECKING:
    from peft import OFTConfig, TaskType


class OftMethod(MethodBlock):
    """OFT: multiply the targeted weights by a learned block-diagonal orthogonal matrix."""

    type: Literal["oft"]
    block_size: int = Field(
        32, ge=0, description="size of each orthogonal block; must divide the layer's input size (0: use r)"
    )
    r: int = Field(0, ge=0, description="number of blocks instead of their size (0: use block_size)")
    module_dropout: float = Field(0.0, ge=0, lt=1, description="chance of skipping a block during training")
    coft: bool = Field(False, description="constrained OFT: keep the rotation within eps of the identity")
    eps: float = Field(6e-5, gt=0, description="COFT's bound on the rotation (only with coft: true)")
    block_share: bool = Field(False, description="one orthogonal block shared across the layer")
    use_cayley_neumann: bool = Field(
        True, description="approximate the Cayley transform by a Neumann series (faster)"
    )
    num_cayley_neumann_terms: int = Field(5, ge=1, description="terms of that Neumann series")
    target_modules: TargetModules = None

    family: Literal["reparameterisation"] = Field("reparameterisation", exclude=True)
    mergeable: Literal[True] = Field(True, exclude=True)

    @model_validator(mode="after")
    def _one_size(self) -> OftMethod:
        if (self.r == 0) == (self.block_size == 0):
            raise ValueError(
                f"give exactly one of block_size or r (got block_size={self.block_size}, r={self.r}); "
                "for example `block_size: 32, r: 0`"
            )
        return self


def oft_config(method: Any, task_type: TaskType, total_steps: int | None = None) -> OFTConfig:
    """peft ``OFTConfig`` from a recipe's oft block."""
    from peft import OFTConfig

    return OFTConfig(
        task_type=task_type,
        r=method.r,
        oft_block_size=method.block_size,
        module_dropout=method.module_dropout,
        coft=method.coft,
        eps=method.eps,
        block_share=method.block_share,
        use_cayley_neumann=method.use_cayley_neumann,
        num_cayley_neumann_terms=method.num_cayley_neumann_terms,
        target_modules=method.target_modules,
    )


register_method(OftMethod, oft_config)
