"""Register: the adapter folder, its model card, its lineage tags and its metrics, as a new MLflow model version.

The node gathers the lineage facts from its inputs as plain values (``lineage_facts``); ``registry.lineage``
turns them into tags (and reads them back); the store registers all or nothing
(``AdapterStore.register_adapter``): the files are uploaded and checked before the version exists, and any
failure removes what was created. The registration id (recipe hash + run id) lets a retry find the version an
interrupted attempt registered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from adapter_registry.bases.resolve import ResolvedBase
from adapter_registry.evaluation.report import card_description, model_card
from adapter_registry.methods import method_builder
from adapter_registry.provenance import git_state, library_versions
from adapter_registry.pyfunc import write_mlmodel
from adapter_registry.recipes import Recipe, recipe_hash
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.lineage import LineageFacts, lineage_tags
from adapter_registry.training.adapter import TrainedAdapter


def lineage_facts(
    recipe: Recipe,
    base: ResolvedBase,
    adapter_folder: Path,
    trained: TrainedAdapter,
    evaluation: dict[str, Any],
    validation: dict[str, Any],
    data_versions: dict[str, dict[str, Any]],
    merge: dict[str, Any] | None,
    merged_uri: str = "",
    route: dict[str, Any] | None = None,
) -> LineageFacts:
    """What one adapter version was built from, gathered from the node's inputs as plain values."""
    commit, dirty = git_state()
    method = recipe.method.type if recipe.method is not None else None  # None: composed
    return LineageFacts(
        recipe_name=recipe.name,
        recipe_hash=recipe_hash(recipe),
        task=recipe.task.type,
        method=method,
        method_family=method_builder(method).family if method else None,
        peft_config=json.loads((adapter_folder / "adapter_config.json").read_text()),
        trainable_params=trained.trainable_params,
        total_params=trained.total_params,
        trainable_share=trained.trainable_share,
        base_id=base.identity,
        base_revision=base.revision,
        base_fingerprint=base.fingerprint,
        base_architecture=base.architecture,
        base_shapes=base.shapes,
        git_commit=commit,
        git_dirty=dirty,
        validation=validation,
        data_versions=data_versions,
        gates=[str(g) for g in recipe.evaluation.gates],
        must_beat_base=recipe.evaluation.must_beat_base,
        warnings=evaluation.get("warnings", []),
        libraries=library_versions(),
        user_tags=recipe.registration.tags,
        training=recipe.training.model_dump(mode="json") if recipe.training is not None else None,
        compose=recipe.compose.model_dump(mode="json") if recipe.compose is not None else None,
        parents=route["parents"] if route is not None else trained.parents,
        route=route["tags"] if route is not None else _arrow_tags(recipe, trained),
        merge=merge,
        merged_uri=merged_uri,
        base_hub_id=base.hub_id,
        base_path=str(base.path),
    )


def _arrow_tags(recipe: Recipe, trained: TrainedAdapter) -> dict[str, str] | None:
    """An Arrow mixture's routing tags: its experts pinned (version, weights digest), top_k, router_temperature."""
    from adapter_registry.routing import arrow_tags

    if recipe.compose is None or not recipe.compose.arrow:
        return None
    return arrow_tags(trained.parents, recipe.compose.arrow_top_k, recipe.compose.arrow_temperature)


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
    route: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the model card (also the version's description) and the ``MLmodel`` file (``adapter_registry.pyfunc``),
    then register the adapter with its lineage (a router's ``route``: its pinned experts, from the route stage);
    returns what was registered."""
    from adapter_registry.registry.store import AdapterStore

    datasets = sorted({Path(v["path"]).parent.name for v in data_versions.values() if v.get("path")})
    card = model_card(
        recipe, evaluation, base.identity, base.fingerprint,
        base_hub_id=base.hub_id, base_obtained=base.obtained, datasets=datasets,
    )  # fmt: skip
    (adapter_folder / "README.md").write_text(card)
    write_mlmodel(adapter_folder)  # mlflow.pyfunc.load_model("models:/NAME@STAGE") answers as `serve` does
    reports = Path(reporting_root) / recipe.name
    reports.mkdir(parents=True, exist_ok=True)
    resolved = reports / "recipe.yaml"
    resolved.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    tags = lineage_tags(
        lineage_facts(
            recipe,
            base,
            adapter_folder,
            trained,
            evaluation,
            validation,
            data_versions,
            merge,
            str(merged_folder.resolve()) if merged_folder else "",
            route,
        )
    )
    registration_id = _registration_id(recipe)
    version = AdapterStore.from_env().register_adapter(
        model_name=recipe.model_name,
        adapter_dir=adapter_folder,
        tags=tags,
        metrics=evaluation["flat_metrics"],
        artifacts={"recipe.yaml": resolved, "reports": reports},
        description=card_description(card),  # MLflow's UI shows the model card on the version's page
        registration_id=registration_id,
    )
    metric = evaluation["task_metric"]
    return {
        "recipe": recipe.name,
        "model_name": version.name,
        "version": version.version,
        "stage": version.stage,
        "run_id": version.run_id,
        "registration_id": registration_id,
        "method": tags[Tag.METHOD],
        "trainable_share": trained.trainable_share,
        "task_metric": metric,
        "adapter_score": evaluation["metrics"][metric],
        "base_score": evaluation["base_metrics"][metric],
        "beats_base": evaluation["beats_base"],
        "warnings": evaluation.get("warnings", []),
        "base": base.identity,  # what `adapter-registry serve --base` takes
        "quantization": trained.contract.base_quantization if trained.contract is not None else "",
    }


def _registration_id(recipe: Recipe) -> str | None:
    """``<recipe hash>:<run id>`` of the recipe's MLflow run (the hooks' active run): the same for every attempt to
    register this run's adapter, so a retry finds the version instead of registering it twice. None without a run
    (the store then starts one)."""
    import mlflow

    active = mlflow.active_run()
    return f"{recipe_hash(recipe)[:16]}:{active.info.run_id}" if active is not None else None


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
    route: dict[str, Any] | None = None,
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
        route,
    )
