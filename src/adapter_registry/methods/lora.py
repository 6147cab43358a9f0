"""LoRA, QLoRA (LoRA on a bitsandbytes-quantised base: the quantisation itself is in ``quantization``) and
LoRA-FA (LoRA with frozen A matrices, trained by peft's LoRA-FA optimizer)."""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, PeftModel, TaskType
from peft.optimizers import create_lorafa_optimizer
from peft.optimizers.lorafa import LoraFAOptimizer

from adapter_registry.methods import register_method


def lora_config(method: Any, task_type: TaskType, total_steps: int | None = None) -> LoraConfig:
    """peft ``LoraConfig`` from a recipe's lora, qlora or lora_fa block."""
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


class _LoraFAOptimizer(LoraFAOptimizer):
    """peft's LoRA-FA optimizer that leaves alone a LoRA layer which got no gradient this step.

    peft's ``step`` fails on a ``lora_B`` without a gradient (e.g. ``all-linear`` adapted an encoder's pooler
    that the head does not read); a zero gradient leaves that B unchanged.
    """

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        for group in self.param_groups:
            for param, name in zip(group["params"], group["names"], strict=True):
                if "lora_B" in name and param.grad is None:
                    param.grad = torch.zeros_like(param)
        return super().step(closure)


def lorafa_optimizer(
    method: Any, model: PeftModel, lr: float, weight_decay: float, extra_groups: list[dict[str, Any]]
) -> torch.optim.Optimizer:
    """peft's LoRA-FA optimizer: freezes every ``lora_A`` and projects B's gradient (arXiv 2308.03303).

    The per-layer scaling (including rank/alpha patterns and rsLoRA) is read from the model's LoRA layers.
    """
    created = create_lorafa_optimizer(
        model, r=method.r, lora_alpha=method.alpha, lr=lr, weight_decay=weight_decay
    )
    optimizer = _LoraFAOptimizer(created.param_groups, lr=lr, weight_decay=weight_decay)  # type: ignore[arg-type]
    for group in extra_groups:
        optimizer.add_param_group(group)
    return optimizer


register_method("lora", family="reparameterisation", mergeable=True)(lora_config)
register_method("qlora", family="reparameterisation", mergeable=True)(lora_config)
register_method("lora_fa", family="reparameterisation", mergeable=True, optimizer=lorafa_optimizer)(
    lora_config
)
