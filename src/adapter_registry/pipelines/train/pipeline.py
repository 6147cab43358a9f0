"""Train: examples → adapter (in memory, and saved as a folder)."""

from kedro.pipeline import Node, Pipeline

from adapter_registry.pipelines.train.nodes import train_adapter_node


def create_pipeline() -> Pipeline:
    return Pipeline(
        [
            Node(
                train_adapter_node,
                ["recipe", "base", "examples", "params:checkpoint_root"],
                ["trained_adapter", "adapter_folder"],
                name="train_adapter_node",
            ),
        ]
    )
