"""OFT: a learned block-diagonal orthogonal matrix multiplies the targeted weights."""

from __future__ import annotations

from typing import Any

from peft import OFTConfig, TaskType

from adapter_registry.methods import register_method


@register_method("oft", family="reparameterisation", mergeable=True)
def oft_config(method: Any, task_type: TaskType, total_steps: int | None = None) -> OFTConfig:
    """peft ``OFTConfig`` from a recipe's oft block."""
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
