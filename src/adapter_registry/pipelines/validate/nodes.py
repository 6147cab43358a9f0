"""Validate: resolve the base, check the data with Great Expectations and DVC, then turn records into examples."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from adapter_registry.bases.resolve import ResolvedBase, resolve_base
from adapter_registry.recipes import Recipe


class DataValidationError(ValueError):
    """The data failed its expectations; nothing is trained or registered."""


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
        data=recipe.data,
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


def carve_validation(train: list[Any], fraction: float, seed: int, label: Any) -> tuple[list[Any], list[Any]]:
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


def prepare_examples(
    recipe: Recipe, raw_splits: dict[str, list[dict]], base: ResolvedBase, validation: dict[str, Any]
) -> dict[str, list[Any]]:
    """Stop here when validation failed; else records → examples, with a validation split carved if absent."""
    from adapter_registry.data.formats import to_classification_examples, to_sft_examples
    from adapter_registry.training.models import load_tokenizer

    if not validation["success"]:
        raise DataValidationError(
            f"recipe {recipe.name!r}: the data failed validation; nothing was trained or registered "
            f"(full report: {recipe.name}/validation.json under the reporting root, data/08_reporting unless "
            f"conf/base/globals.yml moves it)\n{validation['summary']}"
        )
    data = recipe.data
    paths = {"train": data.train, "validation": data.validation, "test": data.test}
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

        def key(e: Any) -> Any:
            return getattr(e, "label", None) or e.answer.split(" | ")[0]

        examples["train"], examples["validation"] = carve_validation(
            examples["train"], data.validation_fraction, recipe.seed, key
        )
    if data.format == "classification":
        check_label_sets(recipe.name, examples)
    return examples


def check_label_sets(recipe_name: str, examples: dict[str, list[Any]]) -> None:
    """Refuse, before any training, a single-class training split or labels that training never saw."""
    seen = {e.label for e in examples["train"]}
    problems = []
    if len(seen) < 2:
        problems.append(
            f"the training split has a single class {sorted(seen)}; classification needs >= 2 labels"
        )
    for split in ("validation", "test"):
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
