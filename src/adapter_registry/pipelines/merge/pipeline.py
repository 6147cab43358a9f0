"""Merge: adapter → merged model with a parity report (only for recipes with merge.enabled)."""

from kedro.pipeline import Node, Pipeline

from adapter_registry.pipelines.merge.nodes import merge_adapter_node


def create_pipeline() -> Pipeline:
    return Pipeline(
        [
            Node(
                merge_adapter_node,
                ["recipe", "trained_adapter", "adapter_folder", "examples", "evaluation_report"],
                ["merge_report", "merged_model"],
                name="merge_adapter_node",
            ),
        ]
    )
