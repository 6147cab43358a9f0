"""The ``method:`` block of a recipe: one closed model per PEFT method, chosen by ``type``.

Each model documents its fields; ``family`` and ``mergeable`` are fixed facts of the method (not user keys).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from adapter_registry.recipes.base import Closed


class LoraMethod(Closed):
    """LoRA: low-rank updates B·A added to the targeted linear layers."""

    type: Literal["lora"]
    r: int = Field(16, ge=1, le=1024, description="rank; higher: more capacity, more memory")
    alpha: float = Field(32, gt=0, description="scaling numerator (update scaled by alpha/r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt, or all-linear"
    )
    use_dora: bool = Field(False, description="DoRA: decompose into magnitude and direction")
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha/sqrt(r)")
    rank_pattern: dict[str, int] = Field(default_factory=dict, description="per-module rank overrides")
    alpha_pattern: dict[str, float] = Field(default_factory=dict, description="per-module alpha overrides")

    family: Literal["reparameterisation"] = Field("reparameterisation", exclude=True)
    mergeable: bool = Field(True, exclude=True)


class QLoraMethod(LoraMethod):
    """QLoRA: LoRA on a base quantised by bitsandbytes (4-bit NF4/FP4 or 8-bit)."""

    type: Literal["qlora"]  # type: ignore[assignment]
    bits: Literal[4, 8] = Field(4, description="4 (NF4/FP4) or 8 (LLM.int8) bit base")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type")
    double_quant: bool = Field(True, description="quantise the quantisation constants too")


MethodSpec = Annotated[LoraMethod | QLoraMethod, Field(discriminator="type")]
