"""The Kedro hooks against a real sqlite MLflow: what MLflow's own UI shows of a run, and the end-of-run table."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from kedro.pipeline import Node

from adapter_registry.data.formats import read_records
from adapter_registry.data.versions import dataset_version
from adapter_registry.pipelines.hooks import (
    EXPERIMENT,
    EXPERIMENT_KIND,
    GIT_COMMIT_TAG,
    MlflowRecipeHooks,
    print_summary,
    recipe_params,
)
from adapter_registry.provenance import git_state
from adapter_registry.recipes import parse_recipe
from helpers import sft_recipe


def _node(name: str, inputs: list[str], outputs: str) -> Node:
    return Node(lambda *_: None, inputs, outputs, name=name, namespace="tiny_sft")


@pytest.fixture
def own_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The hooks set MLflow's process-wide tracking URI and active experiment: give them back after the test."""
    import mlflow.tracking.fluent

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")  # set_experiment exports it; monkeypatch takes it back
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    yield
    mlflow.set_tracking_uri("")


@pytest.mark.usefixtures("own_mlflow")
def test_a_recipe_run_carries_params_datasets_git_commit_and_a_training_experiment(
    tiny_llama: Path, sft_data: Path
) -> None:
    raw = sft_recipe(tiny_llama, sft_data)
    recipe = parse_recipe(raw)
    splits = {split: read_records(raw["data"][split]) for split in ("train", "validation", "test")}
    versions = {split: vars(dataset_version(raw["data"][split])) for split in splits}
    hooks = MlflowRecipeHooks()
    hooks.before_pipeline_run({})
    validate = _node(
        "validate_data_node",
        ["tiny_sft.recipe", "tiny_sft.raw_splits", "tiny_sft.data_versions"],
        "tiny_sft.validation_report",
    )
    inputs = {"tiny_sft.recipe": recipe, "tiny_sft.raw_splits": splits, "tiny_sft.data_versions": versions}
    hooks.before_node_run(validate, inputs)
    run_id = mlflow.active_run().info.run_id
    hooks.after_node_run(validate, inputs, {"tiny_sft.validation_report": {"success": True}})

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.data.params["training.learning_rate"] == str(recipe.training.learning_rate)
    assert run.data.params["method.type"] == "lora" and run.data.params["method.r"] == str(recipe.method.r)
    assert run.data.params["evaluation.metrics"] == '["exact_match", "loss"]'
    assert run.data.params == recipe_params(recipe)
    assert run.data.tags[GIT_COMMIT_TAG] == git_state()[0] != ""
    logged = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(logged) == {"tiny_sft.train", "tiny_sft.validation", "tiny_sft.test"}
    train = logged["tiny_sft.train"]
    assert train.dataset.digest == versions["train"]["md5"]
    assert str(sft_data / "train.jsonl") in train.dataset.source
    assert f'"num_rows": {len(splits["train"])}' in train.dataset.profile
    assert {t.key: t.value for t in train.tags}["mlflow.data.context"] == "train"
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags[EXPERIMENT_KIND[0]] == "custom_model_development"


ROWS = [
    {
        "recipe": "globex_support_qlora_for_a_very_long_tenant_name", "method": "qlora", "trainable_share": 0.035,
        "task_metric": "exact_match", "base_score": 0.0, "adapter_score": 0.98, "beats_base": True,
        "model_name": "globex_support_qlora_for_a_very_long_tenant_name", "version": 1, "stage": "candidate",
        "warnings": ["trained on 48 examples (< 500): [scores] may not generalise"],
        "base": "smollm2-135m-instruct", "quantization": "nf4-dq",
    },
    {
        "recipe": "intent_router", "method": "lora", "trainable_share": 0.0291, "task_metric": "accuracy",
        "base_score": 0.895, "adapter_score": 0.88, "beats_base": False, "model_name": "intent_router",
        "version": 3, "stage": "candidate", "base": "all-minilm-l6-v2",
    },
]  # fmt: skip


def test_the_summary_in_a_log_is_never_cut_and_ends_with_the_next_commands() -> None:
    out = io.StringIO()  # not a terminal: what `make run > log` and CI see
    print_summary(ROWS, file=out)
    text = out.getvalue()
    lines = text.splitlines()
    assert "globex_support_qlora_for_a_very_long_tenant_name/1 (candidate)" in text and "…" not in text
    assert max(len(line) for line in lines) > 80  # as wide as the table, not the 80 columns of no terminal
    assert (
        "warning globex_support_qlora_for_a_very_long_tenant_name: trained on 48 examples (< 500): [scores]"
        in text
    )
    assert lines[lines.index("Next:") + 1 :] == [
        "  adapter-registry promote globex_support_qlora_for_a_very_long_tenant_name/1 --to staging",
        "  adapter-registry serve --base smollm2-135m-instruct --quantization nf4-dq   "
        "# globex_support_qlora_for_a_very_long_tenant_name once in production",
        "  adapter-registry serve --base all-minilm-l6-v2   # intent_router once in production",
    ]  # intent_router does not beat its base: no promote command
