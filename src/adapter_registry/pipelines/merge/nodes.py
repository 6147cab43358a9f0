"""Merge: fold the adapter into the base, then check parity with the adapter and difference from the base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from adapter_registry.merging import merge_adapter
from adapter_registry.methods.quantization import quantization_config
from adapter_registry.recipes import Recipe
from adapter_registry.training.adapter import TrainedAdapter
from adapter_registry.training.features import classification_features, sft_features
from adapter_registry.training.models import load_adapter

PARITY_ROWS = 16


def merge_adapter_node(
    recipe: Recipe,
    trained: TrainedAdapter,
    adapter_folder: Path,
    examples: dict[str, list[Any]],
    evaluation: dict[str, Any],
) -> tuple[dict[str, Any], nn.Module]:
    """Merge a fresh load of the saved adapter (after evaluation, which it waits for) and report parity."""
    del evaluation  # an input only so that merging runs after the in-memory model was evaluated
    rows = examples["test"][:PARITY_ROWS]
    max_length = recipe.max_length
    if trained.task == "sequence_classification":
        features = classification_features([e.text for e in rows], None, trained.tokenizer, max_length)
    else:
        features = sft_features(rows, trained.tokenizer, max_length)
    fresh = load_adapter(trained.base.path, adapter_folder, trained.task, quantization_config(recipe.method))
    merged, report = merge_adapter(
        trained.model, fresh, features, trained.tokenizer.pad_token_id, recipe.merge.tolerance
    )
    return report.as_dict(), merged
