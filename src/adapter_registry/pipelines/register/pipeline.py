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


def create_pipeline(merged: bool = False, routed: bool = False) -> Pipeline:
    """``merged``: the merge report and merged weights are registered too; ``routed``: a router's routing facts
    (``route``: its pinned experts) go into its lineage."""
    inputs: list[str] = [*INPUTS, "merge_report", "merged_model"] if merged else list(INPUTS)
    func = register_merged_adapter_node if merged else register_adapter_node
    if routed:
        names = [
            "recipe", "base", "adapter_folder", "trained", "evaluation", "validation", "data_versions",
            "reporting_root", *(("merge", "merged_folder") if merged else ()),
        ]  # fmt: skip
        keyed = {**dict(zip(names, inputs, strict=True)), "route": "route", "evaluation": "routed_evaluation"}
        return Pipeline([Node(func, keyed, "registration", name="register_adapter_node")])
    return Pipeline([Node(func, inputs, "registration", name="register_adapter_node")])
