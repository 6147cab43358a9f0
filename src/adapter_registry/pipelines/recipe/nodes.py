"""Recipe: the YAML file (already validated by ``RecipeDataset``) with the run's ``--params`` overrides merged in."""

from __future__ import annotations

from typing import Any

from adapter_registry.recipes import Recipe
from adapter_registry.recipes.load import override_recipe


def apply_overrides(recipe_file: Recipe, parameters: dict[str, Any]) -> Recipe:
    """The recipe with the keys ``kedro run --params "<recipe>.training.learning_rate=1e-4"`` gives for it,
    validated by the same schema (a bad key or value stops the run, naming it); the file's recipe when none."""
    return override_recipe(recipe_file, parameters.get(recipe_file.name) or {}, "kedro run --params")
