"""The splits a recipe trains on: a validation split carved (stratified) from train when the recipe gives none,
and the label checks a classifier's splits must pass before any training.

Pure functions of examples; ``pipelines/validate`` calls them once the data passed its expectations.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from adapter_registry.data.formats import ClassificationExample, SftExample
from adapter_registry.recipes.schema import DataSpec
from adapter_registry.vocabulary import SPLITS


class DataValidationError(ValueError):
    """The data failed its expectations; nothing is trained or registered."""


def split_paths(data: DataSpec) -> dict[str, str | None]:
    """The file of each split the recipe names (``None`` for a validation split it leaves to be carved)."""
    return {split: getattr(data, split) for split in SPLITS}


def stratum(example: ClassificationExample | SftExample, separator: str) -> str:
    """What a carved validation split is stratified by: a classification example's label, or the category of an
    SFT example (its answer's text before ``separator``, the recipe's ``task.answer_field_separator``)."""
    if isinstance(example, ClassificationExample):
        return example.label
    return example.answer.split(separator, 1)[0] if separator else example.answer


def carve_validation(
    train: list[Any], fraction: float, seed: int, label: Callable[[Any], Any]
) -> tuple[list[Any], list[Any]]:
    """Stratified split of ``train`` into (train, validation) by ``label(example)``."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, example in enumerate(train):
        groups[label(example)].append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    for indices in groups.values():
        rng.shuffle(indices)
        held.update(indices[: round(len(indices) * fraction)])
    return [e for i, e in enumerate(train) if i not in held], [e for i, e in enumerate(train) if i in held]


def check_label_sets(recipe_name: str, examples: dict[str, list[Any]]) -> None:
    """Refuse, before any training, a single-class training split or labels that training never saw."""
    seen = {e.label for e in examples["train"]}
    problems = []
    if len(seen) < 2:
        problems.append(
            f"the training split has a single class {sorted(seen)}; classification needs >= 2 labels"
        )
    for split in SPLITS[1:]:
        unseen = sorted({e.label for e in examples[split]} - seen)
        if unseen:
            problems.append(
                f"{split} labels never seen in training: {unseen[:5]} ({len(unseen)} in all); "
                "drop those rows or add training examples"
            )
    if problems:
        raise DataValidationError(
            f"recipe {recipe_name!r}: nothing was trained or registered\n" + "\n".join(problems)
        )
