"""Recipe: file + ``kedro run --params`` overrides → the recipe every later node reads."""

from kedro.pipeline import Node, Pipeline

from adapter_registry.pipelines.recipe.nodes import apply_overrides


def create_pipeline() -> Pipeline:
    return Pipeline([Node(apply_overrides, ["recipe_file", "parameters"], "recipe", name="recipe_node")])
