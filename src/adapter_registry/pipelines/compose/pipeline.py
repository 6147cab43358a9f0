"""Compose: registered parents → adapter (in memory, and saved as a folder), in place of the train stage."""

from kedro.pipeline import Node, Pipeline

from adapter_registry.pipelines.compose.nodes import compose_adapter_node


def create_pipeline() -> Pipeline:
    return Pipeline(
        [
            Node(
                compose_adapter_node,
                ["recipe", "base", "examples"],
                ["trained_adapter", "adapter_folder"],
                name="compose_adapter_node",
            ),
        ]
    )
