"""Recipes: the closed schema (``schema``) and the YAML loader (``load``)."""

from adapter_registry.recipes.load import RecipeError, load_recipe, load_recipes, parse_recipe, recipe_hash
from adapter_registry.recipes.schema import Recipe

__all__ = ["Recipe", "RecipeError", "load_recipe", "load_recipes", "parse_recipe", "recipe_hash"]
