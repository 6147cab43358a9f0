"""Node tests on tiny data, and a sliced pipeline (validate stage) on an in-memory catalog."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner

from adapter_registry.data.formats import read_records
from adapter_registry.data.versions import dataset_version
from adapter_registry.pipelines.validate.nodes import (
    DataValidationError,
    prepare_examples,
    resolve_base_model,
    validate_data,
)
from adapter_registry.pipelines.validate.pipeline import create_pipeline
from adapter_registry.recipes import parse_recipe
from helpers import classifier_recipe, sft_recipe, write_jsonl


def _inputs(recipe: dict) -> tuple[dict, dict]:
    data = recipe["data"]
    raw = {split: read_records(data[split]) for split in ("train", "validation", "test")}
    versions = {split: vars(dataset_version(data[split])) for split in raw}
    return raw, versions


def test_carved_sft_validation_is_stratified_by_the_recipes_separator(
    tiny_llama: Path, sft_data: Path
) -> None:
    """The category of an SFT answer is its text before the recipe's answer_field_separator (not always " | ")."""
    train = [
        {"prompt": r["prompt"], "completion": f"{r['completion'].split(' | ')[0]} :: reply {i}"}
        for i, r in enumerate(read_records(sft_data / "train.jsonl"))
    ]
    raw_recipe = sft_recipe(
        tiny_llama,
        sft_data,
        task={"type": "causal_lm_sft", "answer_field_separator": " :: "},
        data={
            "format": "completion",
            "train": str(sft_data / "train.jsonl"),
            "test": str(sft_data / "test.jsonl"),
            "validation_fraction": 0.25,
        },
    )
    recipe = parse_recipe(raw_recipe)
    raw = {"train": train, "test": read_records(sft_data / "test.jsonl")}
    examples = prepare_examples(recipe, raw, resolve_base_model(recipe), {"success": True, "summary": ""})
    category = Counter(e.answer.split(" :: ")[0] for e in [*examples["train"], *examples["validation"]])
    held = Counter(e.answer.split(" :: ")[0] for e in examples["validation"])
    assert len(category) == 3 and held == {c: round(n * 0.25) for c, n in category.items()}


@pytest.mark.parametrize(
    ("spoil", "named"),
    [
        (lambda rows: [*rows, {"text": "a request nobody labelled", "label": None}], "label"),
        (
            lambda rows: [{"text": r["text"], "intent": r["label"]} for r in rows],
            "'label'",
        ),  # no label column
    ],
    ids=["unlabelled-row", "missing-label-column"],
)
def test_validation_failure_is_reported_and_stops_prepare(
    spoil: Callable[[list[dict]], list[dict]], named: str, tiny_bert: Path, intent_data: Path
) -> None:
    rows = [json.loads(line) for line in (intent_data / "train.jsonl").read_text().splitlines()]
    write_jsonl(intent_data / "train.jsonl", spoil(rows))
    recipe = parse_recipe(classifier_recipe(tiny_bert, intent_data))
    raw, versions = _inputs(recipe.model_dump())
    base = resolve_base_model(recipe)
    report = validate_data(recipe, raw, base, versions)
    assert report["success"] is False and named in report["summary"]
    with pytest.raises(DataValidationError, match=r"the data failed validation; nothing was trained"):
        prepare_examples(recipe, raw, base, report)


def test_edited_dvc_data_fails_validation(tiny_bert: Path, intent_data: Path) -> None:
    recipe = parse_recipe(classifier_recipe(tiny_bert, intent_data))
    raw, versions = _inputs(recipe.model_dump())
    versions["train"] = {**versions["train"], "tracked": True, "matches_lock": False}
    report = validate_data(recipe, raw, resolve_base_model(recipe), versions)
    assert report["success"] is False
    assert "differs from dvc.lock (edited without `dvc repro` or `dvc add`)" in report["summary"]


def test_validate_stage_as_a_sliced_pipeline(tiny_bert: Path, intent_data: Path) -> None:
    raw_recipe = classifier_recipe(
        tiny_bert,
        intent_data,
        data={
            "format": "classification",
            "train": str(intent_data / "train.jsonl"),
            "test": str(intent_data / "test.jsonl"),
            "validation_fraction": 0.25,
        },
    )
    recipe = parse_recipe(raw_recipe)
    raw, versions = _inputs(
        {**raw_recipe, "data": {**raw_recipe["data"], "validation": str(intent_data / "validation.jsonl")}}
    )
    del raw["validation"], versions["validation"]
    pipeline = Pipeline(create_pipeline(), namespace="r")
    catalog = DataCatalog(
        {
            "r.recipe": MemoryDataset(recipe),
            "r.raw_splits": MemoryDataset(raw),
            "r.data_versions": MemoryDataset(versions),
        }
    )
    outputs = SequentialRunner().run(pipeline, catalog)
    assert set(outputs) == {"r.examples"}
    examples = outputs["r.examples"].load()
    assert set(examples) == {"train", "validation", "test"}
    assert len(examples["train"]) + len(examples["validation"]) == len(raw["train"])
    assert {e.label for e in examples["validation"]} == {e.label for e in examples["train"]}
