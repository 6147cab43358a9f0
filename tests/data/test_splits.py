"""The splits a recipe trains on: the carved validation split, its strata, and the label checks."""

from __future__ import annotations

import pytest

from adapter_registry.data.formats import ClassificationExample, SftExample
from adapter_registry.data.splits import (
    DataValidationError,
    carve_validation,
    check_label_sets,
    split_paths,
    stratum,
)
from adapter_registry.recipes.schema import DataSpec


def test_carved_validation_is_stratified_and_disjoint() -> None:
    rows = [ClassificationExample(f"text {i}", "ab"[i % 2] if i < 80 else "c") for i in range(100)]
    train, val = carve_validation(rows, 0.1, seed=0, label=lambda e: e.label)
    assert len(train) + len(val) == 100 and not {e.text for e in train} & {e.text for e in val}
    assert sorted(e.label for e in val) == ["a"] * 4 + ["b"] * 4 + ["c"] * 2


def test_stratum_is_the_label_or_the_answers_text_before_the_separator() -> None:
    sft = SftExample(
        (("### Request:\nwhere is it\n### Answer:\n", False), ("delivery :: on its way | soon", True))
    )
    assert stratum(sft, " :: ") == "delivery"
    assert stratum(sft, " | ") == "delivery :: on its way"
    assert stratum(sft, "") == "delivery :: on its way | soon"
    assert stratum(ClassificationExample("where is it", "delivery"), " :: ") == "delivery"


def test_split_paths_name_every_split_in_order() -> None:
    data = DataSpec(format="classification", train="t.jsonl", test="s.jsonl")
    assert list(split_paths(data).items()) == [
        ("train", "t.jsonl"),
        ("validation", None),
        ("test", "s.jsonl"),
    ]


@pytest.mark.parametrize(
    ("train_labels", "test_labels", "message"),
    [
        (["a", "a"], ["a"], r"the training split has a single class \['a'\]"),
        (["a", "b"], ["a", "c"], r"test labels never seen in training: \['c'\] \(1 in all\)"),
    ],
)
def test_label_sets_are_checked_before_training(
    train_labels: list[str], test_labels: list[str], message: str
) -> None:
    def rows(labels: list[str]) -> list[ClassificationExample]:
        return [ClassificationExample(f"text {i}", label) for i, label in enumerate(labels)]

    examples = {"train": rows(train_labels), "validation": rows(train_labels[:1]), "test": rows(test_labels)}
    with pytest.raises(DataValidationError, match=message):
        check_label_sets("r", examples)
