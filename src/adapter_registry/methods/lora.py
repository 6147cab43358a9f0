"""LoRA, QLoRA (LoRA on a bitsandbytes-quantised base: the quantisation itself is in ``quantization``) and
LoRA-FA (LoRA with frozen A matrices, trained by peft's LoRA-FA optimizer)."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field

from adapter_registry.methods.registry import register_method
from adapter_registry.methods.schema import CAUSAL_ONLY, AlphaPattern, MethodBlock, RankPattern, module_names

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig, PeftModel, TaskType
    from peft.optimizers.lorafa import LoraFAOptimizer


class _LowRank(MethodBlock):
    """Fields shared by LoRA, QLoRA and LoRA-FA."""

    r: int = Field(16, ge=1, le=1024, description="rank; higher: more capacity, more memory")
    alpha: float = Field(32, gt=0, description="scaling numerator (update scaled by alpha/r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: Annotated[list[str] | Literal["all-linear"], BeforeValidator(module_names)] = Field(
        "all-linear", description="module names to adapt, or all-linear"
    )
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha/sqrt(r)")
    rank_pattern: RankPattern = Field(
        default_factory=dict, description="per-module rank overrides, e.g. {'down_proj': 32}"
    )
    alpha_pattern: AlphaPattern = Field(
        default_factory=dict, description="per-module alpha overrides, e.g. {'down_proj': 64}"
    )


class LoraMethod(_LowRank):
    """LoRA: low-rank updates B·A added to the targeted linear layers."""

    type: Literal["lora"]
    use_dora: bool = Field(False, description="DoRA: decompose into magnitude and direction")

    family: Literal["reparameterisation"] = Field("reparameterisation", exclude=True)
    mergeable: Literal[True] = Field(True, exclude=True)


class QLoraMethod(LoraMethod):
    """QLoRA: LoRA on a base quantised by bitsandbytes (4-bit NF4/FP4 or 8-bit)."""

    TASKS: ClassVar[frozenset[str]] = CAUSAL_ONLY
    TASK_REASON: ClassVar[str] = "qlora is for causal LMs here; use type: lora for sequence_classification"

    type: Literal["qlora"]  # type: ignore[assignment]
    bits: Literal[4, 8] = Field(4, description="4 (NF4/FP4) or 8 (LLM.int8) bit base")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type")
    double_quant: bool = Field(True, description="quantise the quantisation constants too")


class LoraFaMethod(_LowRank):
    """LoRA-FA: LoRA with the A matrices frozen at their random init; only B trains.

    Trained with peft's LoRA-FA optimizer (``peft.optimizers.create_lorafa_optimizer``), which freezes A and
    projects B's gradient so that the frozen-A update best approximates full LoRA's. The saved adapter is a
    plain LoRA adapter (loads, merges and serves like one).
    """

    type: Literal["lora_fa"]

    family: Literal["reparameterisation"] = Field("reparameterisation", exclude=True)
    mergeable: Literal[True] = Field(True, exclude=True)


def lora_config(method: Any, task_type: TaskType, total_steps: int | None = None) -> LoraConfig:
    """peft ``LoraConfig`` from a recipe's lora, qlora or lora_fa block."""
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type,
        r=method.r,
        lora_alpha=method.alpha,
        lora_dropout=method.dropout,
        target_modules=method.target_modules,
        use_dora=getattr(method, "use_dora", False),
        use_rslora=method.use_rslora,
        rank_pattern=dict(method.rank_pattern),
        alpha_pattern=dict(method.alpha_pattern),
        bias="none",
    )


@cache
def _lorafa_optimizer_class() -> type[LoraFAOptimizer]:
    """peft's LoRA-FA optimizer that leaves alone a LoRA layer which got no gradient this step (made once, on
    first use, so that importing this module imports neither peft nor torch).

    peft's ``step`` fails on a ``lora_B`` without a gradient (e.g. ``all-linear`` adapted an encoder's pooler
    that the head does not read); a zero gradient leaves that B unchanged.
    """
    import torch
    from peft.optimizers.lorafa import LoraFAOptimizer

    class _LoraFAOptimizer(LoraFAOptimizer):
        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            for group in self.param_groups:
                for param, name in zip(group["params"], group["names"], strict=True):
                    if "lora_B" in name and param.grad is None:
                        param.grad = torch.zeros_like(param)
            return super().step(closure)

    return _LoraFAOptimizer


def lorafa_optimizer(
    method: Any, model: PeftModel, lr: float, weight_decay: float, extra_groups: list[dict[str, Any]]
) -> torch.optim.Optimizer:
    """peft's LoRA-FA optimizer: freezes every ``lora_A`` and projects B's gradient (arXiv 2308.03303).

    The per-layer scaling (including rank/alpha patterns and rsLoRA) is read from the model's LoRA layers.
    """
    from peft.optimizers import create_lorafa_optimizer

    created = create_lorafa_optimizer(
        model, r=method.r, lora_alpha=method.alpha, lr=lr, weight_decay=weight_decay
    )
    optimizer = _lorafa_optimizer_class()(created.param_groups, lr=lr, weight_decay=weight_decay)  # type: ignore[arg-type]
    for group in extra_groups:
        optimizer.add_param_group(group)
    return optimizer


register_method(LoraMethod, lora_config)
register_method(QLoraMethod, lora_config)
register_method(LoraFaMethod, lora_config, optimizer=lorafa_optimizer)
