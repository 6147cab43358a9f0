"""Data side of ``benchmarks/quality.py``: a labelled train/test CSV pair → checked, split examples.

Every bad input the quality issue names stops here, before any model is loaded: a missing text or label column,
a single-class training set and a test label never seen in training are errors; too little data is a warning.
The budget check (a budget too small for one epoch) needs a measured step time, so it lives in ``quality.py``
but also runs before training starts.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adapter_registry.data.formats import (
    ClassificationExample,
    DataError,
    read_records,
    to_classification_examples,
)
from adapter_registry.data.splits import carve_validation
from adapter_registry.training.adapter import size_warnings


class BenchmarkInputError(ValueError):
    """Input the benchmark refuses before training: the message names the file, the value and the fix."""


@dataclass
class LabelledData:
    train: list[ClassificationExample]
    validation: list[ClassificationExample]
    test: list[ClassificationExample]
    labels: list[str]
    warnings: list[str] = field(default_factory=list)


def _check_columns(records: Sequence[dict], path: Path, text_column: str, label_column: str) -> None:
    present = list(records[0])
    for role, column, flag in (
        ("text", text_column, "--text-column"),
        ("label", label_column, "--label-column"),
    ):
        if column not in present:
            raise BenchmarkInputError(
                f"{path}: {role} column {column!r} does not exist; columns are {present}; pass {flag} NAME"
            )


def stratified_sample(
    examples: Sequence[ClassificationExample], per_class: int, seed: int = 0
) -> list[ClassificationExample]:
    """At most ``per_class`` examples of every label, in a seeded order (for --quick and scoring subsets)."""
    groups: dict[str, list[ClassificationExample]] = defaultdict(list)
    for e in examples:
        groups[e.label].append(e)
    rng = random.Random(seed)
    out: list[ClassificationExample] = []
    for label in sorted(groups):
        rows = list(groups[label])
        rng.shuffle(rows)
        out += rows[:per_class]
    rng.shuffle(out)
    return out


def load_labelled(
    train_path: str | Path,
    test_path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    validation_fraction: float = 0.1,
    seed: int = 0,
    max_classes: int | None = None,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> LabelledData:
    """Read, check and split: a stratified validation split is carved from train (the test split stays whole)."""
    splits = {}
    for name, path in (("train", Path(train_path)), ("test", Path(test_path))):
        records = read_records(path)  # DataError: missing, empty or unreadable file
        _check_columns(records, path, text_column, label_column)
        splits[name] = to_classification_examples(
            records, text_column=text_column, label_column=label_column, source=str(path)
        )
    train, test = splits["train"], splits["test"]
    counts = Counter(e.label for e in train)
    if len(counts) < 2:
        raise BenchmarkInputError(
            f"{train_path}: a single-class dataset (every row is {next(iter(counts))!r} in column {label_column!r}); "
            "classification needs at least 2 labels - is --label-column the right column?"
        )
    unseen = sorted({e.label for e in test} - set(counts))
    if unseen:
        n = sum(e.label in unseen for e in test)
        raise BenchmarkInputError(
            f"{test_path}: {len(unseen)} test labels never seen in training ({n} rows), e.g. {unseen[:5]}; "
            "no model can predict them: drop those rows or add training examples"
        )
    if max_classes is not None:  # --quick: a few classes, a few rows each
        keep = set(sorted(counts)[:max_classes])
        train, test = [e for e in train if e.label in keep], [e for e in test if e.label in keep]
    if train_per_class is not None:
        train = stratified_sample(train, train_per_class, seed)
    if test_per_class is not None:
        test = stratified_sample(test, test_per_class, seed)
    train, validation = carve_validation(list(train), validation_fraction, seed, lambda e: e.label)
    warnings = size_warnings(len(train), [e.label for e in train])
    missing_in_val = sorted(set(e.label for e in train) - {e.label for e in validation})
    if missing_in_val:
        warnings.append(
            f"{len(missing_in_val)} labels have no validation example (too few rows to carve one): "
            f"{missing_in_val[:5]}; model selection does not see them"
        )
    if not validation:
        raise DataError(f"{train_path}: too few rows to carve a validation split ({len(train)} rows)")
    return LabelledData(train, validation, list(test), sorted({e.label for e in train}), warnings)
