"""The GX suites on tiny splits: good data passes; each kind of bad data fails the expectation that names it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapter_registry.data.expectations import ValidationReport, validate_splits, write_data_docs

from .conftest import TEMPLATE, chat_rows, expect, spec

Splits = dict[str, list[dict[str, Any]]]


def run(splits: Splits, fmt: str, tokenizer: Any, **expectations: Any) -> ValidationReport:
    task = "sequence_classification" if fmt == "classification" else "causal_lm_sft"
    return validate_splits(
        splits,
        data=spec(fmt),
        expectations=expect(**expectations),
        task_type=task,
        tokenizer=tokenizer,
        prompt_template=TEMPLATE,
    )


def failed(report: ValidationReport) -> set[tuple[str, str, str | None]]:
    return {(f.split, f.expectation, f.column) for f in report.failures}


def test_good_sft_data_passes_with_statistics(sft_splits: Splits, tokenizer: Any) -> None:
    report = run(sft_splits, "completion", tokenizer)
    assert report.success, report.summary()
    assert report.statistics["rows"] == {"train": 30, "validation": 12, "test": 12}
    assert report.statistics["overlap"]["test"] == {"exact": 0, "normalised": 0}
    assert 10 < report.statistics["tokens"]["train"]["mean"] < 30
    assert report.summary().startswith("data validation passed")
    json.dumps(report.to_dict())  # everything is JSON-serialisable
    assert set(report.result["splits"]) == {"train", "validation", "test"}


def test_good_classification_data_passes(cls_splits: Splits, tokenizer: Any) -> None:
    report = run(cls_splits, "classification", tokenizer)
    assert report.success, report.summary()
    assert report.statistics["labels"]["train"] == {"payroll": 10, "printer_issue": 10, "vpn_access": 10}


def test_nulls_and_missing_column(sft_splits: Splits, tokenizer: Any) -> None:
    sft_splits["validation"][4]["completion"] = None
    sft_splits["test"] = [{"prompt": r["prompt"]} for r in sft_splits["test"]]
    report = run(sft_splits, "completion", tokenizer)
    assert ("validation", "expect_column_values_to_not_be_null", "completion") in failed(report)
    assert ("test", "expect_column_to_exist", "completion") in failed(report)
    null = next(f for f in report.failures if f.expectation == "expect_column_values_to_not_be_null")
    assert null.sample is not None and null.sample["row"] == 5 and null.sample["completion"] is None


def test_unknown_label(cls_splits: Splits, tokenizer: Any) -> None:
    cls_splits["test"][2]["label"] = "travel"
    report = run(cls_splits, "classification", tokenizer)
    assert failed(report) == {("test", "expect_column_values_to_be_in_set", "label")}
    assert report.failures[0].sample == {"row": 3, **cls_splits["test"][2]}
    declared = run(cls_splits, "classification", tokenizer, labels=["payroll", "printer_issue"])
    assert ("train", "expect_column_values_to_be_in_set", "label") in failed(declared)


def test_duplicates_over_the_threshold(sft_splits: Splits, tokenizer: Any) -> None:
    sft_splits["train"] += [dict(sft_splits["train"][0]) for _ in range(3)]
    report = run(sft_splits, "completion", tokenizer, max_duplicate_share=0.05)
    assert failed(report) == {("train", "expect_column_mean_to_be_between", "is_duplicate")}
    assert "observed 0.0909" in report.failures[0].detail
    assert run(sft_splits, "completion", tokenizer, max_duplicate_share=0.1).success


def test_examples_longer_than_max_tokens(sft_splits: Splits, tokenizer: Any) -> None:
    sft_splits["train"][7]["completion"] = "refund | " + "very " * 80 + "long"
    report = run(sft_splits, "completion", tokenizer, max_tokens=40)
    assert failed(report) == {("train", "expect_column_values_to_be_between", "token_count")}
    assert report.failures[0].sample["row"] == 8 and report.failures[0].sample["token_count"] > 40


def test_too_few_rows(sft_splits: Splits, tokenizer: Any) -> None:
    report = run(sft_splits, "completion", tokenizer, min_rows=20)
    assert ("test", "expect_table_row_count_to_be_between", None) in failed(report)


@pytest.mark.parametrize(
    ("leaked", "columns"),
    [
        (lambda t: t, {"exact_overlap_with", "normalised_overlap_with"}),
        (lambda t: t.upper() + "!", {"normalised_overlap_with"}),
    ],
)
def test_leakage_between_splits(sft_splits: Splits, tokenizer: Any, leaked: Any, columns: set[str]) -> None:
    sft_splits["test"][0]["prompt"] = leaked(sft_splits["train"][3]["prompt"])
    report = run(sft_splits, "completion", tokenizer)
    assert failed(report) == {("test", "expect_column_values_to_be_null", c) for c in columns}
    assert all(f.sample and f.sample[f.column] == "train" for f in report.failures)
    assert run(sft_splits, "completion", tokenizer, allow_split_overlap=True).success


def test_chat_roles_out_of_order_and_empty_assistant(tokenizer: Any) -> None:
    splits = {"train": chat_rows(12), "validation": chat_rows(6, 50), "test": chat_rows(6, 80)}
    assert run(splits, "chat", tokenizer).success
    splits["train"][2]["messages"] = [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]
    splits["test"][1]["messages"][2]["content"] = " "
    report = run(splits, "chat", tokenizer)
    assert failed(report) == {
        ("train", "expect_column_values_to_be_null", "chat_problem"),
        ("test", "expect_column_values_to_be_null", "chat_problem"),
    }
    problems = {f.split: f.sample["chat_problem"] for f in report.failures if f.sample}
    assert problems["train"].startswith("roles out of order: message 0 is 'assistant'")
    assert problems["test"] == "message 2 is an empty assistant turn"


def test_empty_string_and_invalid_unicode(sft_splits: Splits, tokenizer: Any) -> None:
    sft_splits["train"][1]["prompt"] = "   "
    sft_splits["train"][2]["prompt"] = "bad \ud800 surrogate"  # what a JSON "\ud800" escape decodes to
    report = run(sft_splits, "completion", tokenizer)
    assert {
        ("train", "expect_column_values_to_match_regex", "prompt"),
        ("train", "expect_column_values_to_not_match_regex", "prompt"),
    } <= failed(report)
    json.dumps(report.to_dict(), ensure_ascii=False).encode("utf-8")  # the report itself stays valid UTF-8


def test_summary_names_each_failed_expectation_with_a_sample_row(cls_splits: Splits, tokenizer: Any) -> None:
    cls_splits["test"][0]["label"] = "travel"
    cls_splits["validation"][0]["text"] = cls_splits["train"][0]["text"]
    summary = run(cls_splits, "classification", tokenizer).summary()
    lines = summary.splitlines()
    assert lines[0] == "data validation failed: 3 expectation(s) on train 30, validation 12, test 12"
    assert "[test] expect_column_values_to_be_in_set(label): labels must be in expectations.labels" in summary
    assert "[validation] expect_column_values_to_be_null(exact_overlap_with): leakage" in summary
    assert '    e.g. {"row": 1, "text": "ticket 0: something about vpn_access", "label": "payroll"' in summary


def test_recipe_extra_expectation(sft_splits: Splits, tokenizer: Any) -> None:
    """The field the schema is to gain: ``expectations.extra`` (here on a subclass of ExpectationsSpec)."""
    from pydantic import Field

    from adapter_registry.recipes.schema import ExpectationsSpec

    class WithExtra(ExpectationsSpec):
        extra: list[dict[str, Any]] = Field(default_factory=list)

    rule = {
        "expectation": "expect_column_values_to_match_regex",
        "kwargs": {"column": "prompt", "regex": "^x"},
        "splits": ["test"],
    }
    spec_with_extra = WithExtra(min_rows=5, extra=[rule])
    report = validate_splits(
        sft_splits,
        data=spec("completion"),
        expectations=spec_with_extra,
        task_type="causal_lm_sft",
        tokenizer=tokenizer,
        prompt_template=TEMPLATE,
    )
    assert failed(report) == {("test", "expect_column_values_to_match_regex", "prompt")}
    assert report.failures[0].detail.startswith("added by the recipe: expect_column_values_to_match_regex")


def test_write_data_docs(cls_splits: Splits, tokenizer: Any, tmp_path: Path) -> None:
    cls_splits["test"][0]["label"] = "travel"
    report = run(cls_splits, "classification", tokenizer)
    index = write_data_docs(report, tmp_path / "docs")
    assert index == (tmp_path / "docs" / "index.html").resolve()
    pages = list((tmp_path / "docs" / "validations").rglob("*.html"))
    assert len(pages) == 3
    test_page = next(p for p in pages if p.name == "test.html").read_text()
    assert "expect_column_values_to_be_in_set" in test_page or "values must belong to this set" in test_page
