"""Train: one readable loop over the recipe's examples (resumable from checkpoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapter_registry.bases.resolve import ResolvedBase
from adapter_registry.recipes import Recipe, recipe_hash
from adapter_registry.training.adapter import TrainedAdapter, train_adapter


def train_adapter_node(
    recipe: Recipe, base: ResolvedBase, examples: dict[str, list[Any]], checkpoint_root: str
) -> tuple[TrainedAdapter, TrainedAdapter]:
    """Train the adapter; returned twice: in memory for the next nodes, and to the adapter-folder dataset."""
    trained = train_adapter(
        recipe,
        base,
        examples["train"],
        examples["validation"],
        checkpoint_dir=Path(checkpoint_root) / recipe.name / "checkpoints",
        run_key=recipe_hash(recipe),
    )
    return trained, trained
