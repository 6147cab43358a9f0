"""Validate: resolve the base, check the data with Great Expectations and DVC, then turn records into examples."""

from __future__ import annotations

from typing import Any

from adapter_registry.bases.resolve import ResolvedBase, resolve_base
from adapter_registry.data.splits import (
    DataValidationError,
    carve_validation,
    check_label_sets,
    split_paths,
    stratum,
)
from adapter_registry.recipes import Recipe
from adapter_registry.vocabulary import ANSWER_SEPARATOR


def resolve_base_model(recipe: Recipe) -> ResolvedBase:
    """The recipe's base as a local folder with its identity (the offline SmolLM2 is converted once)."""
    return resolve_base(recipe.base)


def validate_data(
    recipe: Recipe, raw_splits: dict[str, list[dict]], base: ResolvedBase, data_versions: dict[str, dict]
) -> dict[str, Any]:
    """Run the format's expectation suite (plus the recipe's) and the DVC lock check; never raises on bad data:
    the report is saved whatever the outcome, and ``prepare_examples`` stops the run when it failed."""
    from adapter_registry.data.expectations import validate_splits
    from adapter_registry.training.models import load_tokenizer

    report = validate_splits(
        raw_splits,
        data=recipe.data_spec,
        expectations=recipe.expectations,
        task_type=recipe.task.type,
        tokenizer=load_tokenizer(base.path),
        prompt_template=getattr(recipe.task, "prompt_template", None),
    )
    result = report.to_dict()
    stale = [
        f"{v['path']}: md5 {v['md5']} differs from dvc.lock (edited without `dvc repro` or `dvc add`)"
        for v in data_versions.values()
        if v["tracked"] and not v["matches_lock"]
    ]
    result["dvc_lock_problems"] = stale
    result["summary"] = "\n".join(filter(None, [report.summary() if not report.success else "", *stale]))
    result["success"] = bool(report.success and not stale)
    return result


def prepare_examples(
    recipe: Recipe, raw_splits: dict[str, list[dict]], base: ResolvedBase, validation: dict[str, Any]
) -> dict[str, list[Any]]:
    """Stop here when validation failed; else records → examples, with a validation split carved if absent
    (stratified by label, or by the answer's category before the recipe's ``answer_field_separator``)."""
    from adapter_registry.data.formats import to_classification_examples, to_sft_examples
    from adapter_registry.training.models import load_tokenizer

    if not validation["success"]:
        raise DataValidationError(
            f"recipe {recipe.name!r}: the data failed validation; nothing was trained or registered "
            f"(full report: {recipe.name}/validation.json under the reporting root, data/08_reporting unless "
            f"conf/base/globals.yml moves it)\n{validation['summary']}"
        )
    data = recipe.data_spec
    paths = split_paths(data)
    examples: dict[str, list[Any]] = {}
    for split, records in raw_splits.items():
        if data.format == "classification":
            examples[split] = list(
                to_classification_examples(
                    records,
                    text_column=data.text_column,
                    label_column=data.label_column,
                    source=str(paths[split]),
                )
            )
        else:
            examples[split] = list(
                to_sft_examples(
                    records,
                    data.format,
                    prompt_template=recipe.task.prompt_template,  # type: ignore[union-attr]
                    tokenizer=load_tokenizer(base.path),
                    source=str(paths[split]),
                )
            )
    if "validation" not in examples:
        separator = getattr(recipe.task, "answer_field_separator", ANSWER_SEPARATOR)
        examples["train"], examples["validation"] = carve_validation(
            examples["train"], data.validation_fraction, recipe.seed, lambda e: stratum(e, separator)
        )
    if data.format == "classification":
        check_label_sets(recipe.name, examples)
    return examples
