"""Register: adapter + reports + lineage → a new MLflow model version (stage candidate)."""

from kedro.pipeline import Node, Pipeline

from adapter_registry.pipelines.register.nodes import register_adapter_node, register_merged_adapter_node

INPUTS = [
    "recipe",
    "base",
    "adapter_folder",
    "trained_adapter",
    "evaluation_report",
    "validation_report",
    "data_versions",
    "params:reporting_root",
]


def create_pipeline(merged: bool = False) -> Pipeline:
    if merged:
        return Pipeline(
            [
                Node(
                    register_merged_adapter_node,
                    [*INPUTS, "merge_report", "merged_model"],
                    "registration",
                    name="register_adapter_node",
                )
            ]
        )
    return Pipeline([Node(register_adapter_node, INPUTS, "registration", name="register_adapter_node")])
