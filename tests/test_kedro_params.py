"""Recipe keys overridden for one run with Kedro's own `kedro run --params`, checked by the recipe schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from adapter_registry.pipelines.recipe.nodes import apply_overrides
from adapter_registry.recipes import RecipeError, parse_recipe, recipe_hash
from helpers import sft_recipe
from test_pipeline import kedro_run, make_project


def _overrides(*dotlist: str) -> dict:
    """What `kedro run --params "a.b=1,..."` hands Kedro's parameters (its own parser: OmegaConf's dot list)."""
    return OmegaConf.to_container(OmegaConf.from_dotlist(list(dotlist)))


def test_overrides_are_merged_and_validated(tiny_llama: Path, sft_data: Path) -> None:
    recipe = parse_recipe(sft_recipe(tiny_llama, sft_data))
    assert apply_overrides(recipe, {}) is recipe and apply_overrides(recipe, {"other": {"x": 1}}) is recipe
    changed = apply_overrides(
        recipe,
        _overrides(
            "tiny_sft.training.learning_rate=1e-4", "tiny_sft.method.r=8", "tiny_sft.training.epochs=2"
        ),
    )
    assert (changed.training.learning_rate, changed.method.r, changed.training.epochs) == (1e-4, 8, 2)
    assert changed.training.batch_size == recipe.training.batch_size and recipe_hash(changed) != recipe_hash(
        recipe
    )
    with pytest.raises(RecipeError, match=r"^kedro run --params: tiny_sft\.training\.learing_rate: unknown key\. "
                       r"Fix: did you mean 'learning_rate'\?"):  # fmt: skip
        apply_overrides(recipe, _overrides("tiny_sft.training.learing_rate=1e-4"))
    with pytest.raises(
        RecipeError, match=r"tiny_sft\.training\.learning_rate: Input should be less than 1 \(got 3"
    ):
        apply_overrides(recipe, _overrides("tiny_sft.training.learning_rate=3"))
    with pytest.raises(
        RecipeError, match=r"tiny_sft\.data\.train: cannot be overridden .* Fix: edit pipelines/"
    ):
        apply_overrides(recipe, _overrides("tiny_sft.data.train=other.jsonl"))


@pytest.mark.slow
def test_kedro_run_params_reach_the_recipe_and_a_typo_stops_the_run(
    tiny_llama: Path, sft_data: Path, tmp_path: Path
) -> None:
    project = make_project(tmp_path / "project", [sft_recipe(tiny_llama, sft_data)])
    db = tmp_path / "mlflow.db"
    up_to_base = ("--to-nodes", "tiny_sft.resolve_base_node")
    done = kedro_run(project, db, *up_to_base, "--params", "tiny_sft.training.learning_rate=0.00123")
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = MlflowClient(f"sqlite:///{db}").search_runs(
        [MlflowClient(f"sqlite:///{db}").get_experiment_by_name("adapter-registry").experiment_id]
    )
    assert run.data.params["training.learning_rate"] == "0.00123"
    typo = kedro_run(project, db, *up_to_base, "--params", "tiny_sft.training.learing_rate=0.001")
    assert typo.returncode != 0
    assert (
        "tiny_sft.training.learing_rate: unknown key. Fix: did you mean 'learning_rate'?"
        in typo.stdout + typo.stderr
    )
