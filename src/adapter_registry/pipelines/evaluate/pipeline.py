"""Evaluate: adapter + test split → report, figures, every test row's answer, DVC's metrics and plot data."""

from kedro.pipeline import Node, Pipeline

from adapter_registry.pipelines.evaluate.nodes import evaluate_adapter_node


def create_pipeline() -> Pipeline:
    return Pipeline(
        [
            Node(
                evaluate_adapter_node,
                ["recipe", "trained_adapter", "examples"],
                [
                    "evaluation_report",
                    "evaluation_figures",
                    "evaluation_predictions",
                    "dvc_metrics",
                    "learning_curve",
                ],
                name="evaluate_adapter_node",
            ),
        ]
    )
