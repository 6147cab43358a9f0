"""Validate: base → expectations → examples."""

from kedro.pipeline import Node, Pipeline

from adapter_registry.pipelines.validate.nodes import prepare_examples, resolve_base_model, validate_data


def create_pipeline() -> Pipeline:
    return Pipeline(
        [
            Node(resolve_base_model, "recipe", "base", name="resolve_base_node"),
            Node(
                validate_data,
                ["recipe", "raw_splits", "base", "data_versions"],
                "validation_report",
                name="validate_data_node",
            ),
            Node(
                prepare_examples,
                ["recipe", "raw_splits", "base", "validation_report"],
                "examples",
                name="prepare_examples_node",
            ),
        ]
    )
