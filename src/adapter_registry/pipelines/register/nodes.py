"""Register: the adapter folder, its model card, its lineage tags and its metrics, as a new MLflow model version.

All or nothing (``AdapterStore.register_adapter``): the files are uploaded and checked before the version
exists, and any failure removes what was created.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from adapter_registry.bases.resolve import ResolvedBase
from adapter_registry.evaluation.report import model_card
from adapter_registry.methods import method_builder
from adapter_registry.provenance import git_state, library_versions
from adapter_registry.recipes import Recipe, recipe_hash
from adapter_registry.registry.entities import Tag
from adapter_registry.training.adapter import TrainedAdapter

MAX_TAG = 4900  # MLflow keeps model-version tag values up to 5000 characters


def _json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_TAG else json.dumps({"truncated": True, "head": text[: MAX_TAG - 40]})


COMPOSED = "composition"  # Tag.METHOD of an adapter built from registered ones (compose: in its recipe)
COMPOSED_FAMILY = "reparameterisation"  # what peft's add_weighted_adapter builds: a LoRA adapter


def method_type(recipe: Recipe) -> str:
    """The method a version records: the recipe's method type, or ``composition``."""
    return recipe.method.type if recipe.method is not None else COMPOSED


def lineage_tags(
    recipe: Recipe,
    base: ResolvedBase,
    adapter_folder: Path,
    trained: TrainedAdapter,
    evaluation: dict[str, Any],
    validation: dict[str, Any],
    data_versions: dict[str, dict[str, Any]],
    merge: dict[str, Any] | None,
    merged_uri: str = "",
) -> dict[str, str]:
    """Every lineage fact of one adapter version, keyed by ``registry.entities.Tag``."""
    commit, dirty = git_state()
    tags = {
        Tag.RECIPE_NAME: recipe.name,
        Tag.RECIPE_HASH: recipe_hash(recipe),
        Tag.TASK: recipe.task.type,
        Tag.METHOD: method_type(recipe),
        Tag.METHOD_FAMILY: method_builder(recipe.method.type).family if recipe.method else COMPOSED_FAMILY,
        Tag.PEFT_CONFIG: _json(json.loads((adapter_folder / "adapter_config.json").read_text())),
        Tag.TRAINABLE_PARAMS: str(trained.trainable_params),
        Tag.TOTAL_PARAMS: str(trained.total_params),
        Tag.TRAINABLE_SHARE: f"{trained.trainable_share:.6g}",
        Tag.BASE_ID: base.identity,
        Tag.BASE_REVISION: base.revision,
        Tag.BASE_FINGERPRINT: base.fingerprint,
        Tag.BASE_ARCHITECTURE: base.architecture,
        Tag.BASE_SHAPES: _json(base.shapes),
        Tag.GIT_COMMIT: commit,
        Tag.GIT_DIRTY: str(dirty).lower(),
        Tag.DATA_VALIDATION: _json(
            {
                "success": validation["success"],
                "statistics": validation.get("statistics", {}),
                "failures": validation.get("failures", [])[:5],
            }
        ),
        Tag.GATES: _json([str(g) for g in recipe.evaluation.gates]),
        Tag.MUST_BEAT_BASE: str(recipe.evaluation.must_beat_base).lower(),
        Tag.WARNINGS: _json(evaluation.get("warnings", [])),
        **{Tag.library(name): version for name, version in library_versions().items()},
        **{f"ar.user.{k}": v for k, v in recipe.registration.tags.items()},
    }
    if recipe.training is not None:
        tags[Tag.TRAINING] = _json(recipe.training.model_dump(mode="json"))
    if recipe.compose is not None:
        tags[Tag.PARENTS] = _json(trained.parents)
        tags[Tag.COMPOSE] = _json(recipe.compose.model_dump(mode="json"))
        tags[Tag.COMPOSE_TYPE] = recipe.compose.combination_type
        tags[Tag.COMPOSE_DENSITY] = "" if recipe.compose.density is None else f"{recipe.compose.density:g}"
    for split, version in data_versions.items():
        tags[Tag.data_path(split)] = version["path"]
        tags[Tag.data_md5(split)] = version["md5"]
        tags[Tag.data_commit(split)] = version.get("lock_commit") or ""
    if merge is not None:
        tags[Tag.MERGED_URI] = merged_uri
        tags[Tag.MERGE_PARITY] = f"{merge['max_abs_diff']:.6g}"
        tags[Tag.MERGE_VS_BASE] = f"{merge['diff_vs_base']:.6g}"
    return tags


def register_adapter_node(
    recipe: Recipe,
    base: ResolvedBase,
    adapter_folder: Path,
    trained: TrainedAdapter,
    evaluation: dict[str, Any],
    validation: dict[str, Any],
    data_versions: dict[str, dict[str, Any]],
    reporting_root: str,
    merge: dict[str, Any] | None = None,
    merged_folder: Path | None = None,
) -> dict[str, Any]:
    """Write the model card, then register the adapter with its lineage; returns what was registered."""
    from adapter_registry.registry.store import AdapterStore

    (adapter_folder / "README.md").write_text(model_card(recipe, evaluation, base.identity, base.fingerprint))
    reports = Path(reporting_root) / recipe.name
    reports.mkdir(parents=True, exist_ok=True)
    resolved = reports / "recipe.yaml"
    resolved.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    tags = lineage_tags(
        recipe,
        base,
        adapter_folder,
        trained,
        evaluation,
        validation,
        data_versions,
        merge,
        str(merged_folder.resolve()) if merged_folder else "",
    )
    version = AdapterStore.from_env().register_adapter(
        model_name=recipe.model_name,
        adapter_dir=adapter_folder,
        tags=tags,
        metrics=evaluation["flat_metrics"],
        artifacts={"recipe.yaml": resolved, "reports": reports},
        description=recipe.description,
    )
    metric = evaluation["task_metric"]
    return {
        "recipe": recipe.name,
        "model_name": version.name,
        "version": version.version,
        "stage": version.stage,
        "run_id": version.run_id,
        "method": method_type(recipe),
        "trainable_share": trained.trainable_share,
        "task_metric": metric,
        "adapter_score": evaluation["metrics"][metric],
        "base_score": evaluation["base_metrics"][metric],
        "beats_base": evaluation["beats_base"],
        "warnings": evaluation.get("warnings", []),
    }


def register_merged_adapter_node(
    recipe: Recipe,
    base: ResolvedBase,
    adapter_folder: Path,
    trained: TrainedAdapter,
    evaluation: dict[str, Any],
    validation: dict[str, Any],
    data_versions: dict[str, dict[str, Any]],
    reporting_root: str,
    merge: dict[str, Any],
    merged_folder: Path,
) -> dict[str, Any]:
    """``register_adapter_node`` for a recipe that merged: records the parity figures and the merged weights."""
    return register_adapter_node(
        recipe,
        base,
        adapter_folder,
        trained,
        evaluation,
        validation,
        data_versions,
        reporting_root,
        merge,
        merged_folder,
    )
