"""One namespaced pipeline per recipe in ``pipelines/``: ``kedro run`` runs them all,
``kedro run --namespaces NAME`` one of them, ``kedro run --params "NAME.training.learning_rate=1e-4"`` overrides a
recipe key for that run (validated by the recipe schema; ``pipelines/recipe``)."""

from __future__ import annotations

from pathlib import Path

from kedro.pipeline import Pipeline

from adapter_registry.pipelines.compose.pipeline import create_pipeline as compose_pipeline
from adapter_registry.pipelines.evaluate.pipeline import create_pipeline as evaluate_pipeline
from adapter_registry.pipelines.merge.pipeline import create_pipeline as merge_pipeline
from adapter_registry.pipelines.recipe.pipeline import create_pipeline as recipe_file_pipeline
from adapter_registry.pipelines.register.pipeline import create_pipeline as register_pipeline
from adapter_registry.pipelines.route.pipeline import (
    create_evaluation_pipeline as routing_evaluation_pipeline,
)
from adapter_registry.pipelines.route.pipeline import create_pipeline as route_pipeline
from adapter_registry.pipelines.train.pipeline import create_pipeline as train_pipeline
from adapter_registry.pipelines.validate.pipeline import create_pipeline as validate_pipeline
from adapter_registry.recipes import Recipe, load_recipes

SHARED_PARAMETERS = {"checkpoint_root", "reporting_root"}


def recipe_pipeline(recipe: Recipe) -> Pipeline:
    """recipe (+ --params) → validate → train (or compose) → evaluate → [merge] → register, namespaced by the
    recipe's name. A router (``routes_to:``) resolves and pins its experts between validate and train: training
    reads the examples only that route stage hands on, so a router with bad experts trains nothing; after its
    evaluation it is scored against its experts alone and a uniform mix, and that report is what it registers."""
    build = compose_pipeline() if recipe.compose is not None else train_pipeline()
    routed = recipe.routes_to is not None
    if routed:
        build = route_pipeline() + Pipeline(build, inputs={"examples": "routed_examples"})
    stages = recipe_file_pipeline() + validate_pipeline() + build + evaluate_pipeline()
    if routed:
        stages += routing_evaluation_pipeline()
    if recipe.merge.enabled:
        stages += merge_pipeline()
    stages += register_pipeline(merged=recipe.merge.enabled, routed=routed)
    parameters = SHARED_PARAMETERS if recipe.compose is None else SHARED_PARAMETERS - {"checkpoint_root"}
    return Pipeline(stages, namespace=recipe.name, parameters=parameters)


def register_pipelines(root: Path | str = ".") -> dict[str, Pipeline]:
    """Every recipe's pipeline by name, and ``__default__`` = all of them."""
    recipes = load_recipes(root)
    pipelines = {name: recipe_pipeline(recipe) for name, recipe in recipes.items()}
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    return pipelines
