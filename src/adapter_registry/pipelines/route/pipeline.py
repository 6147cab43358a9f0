"""Route: examples → pinned experts (the routing facts) + the examples training may use; after evaluation, the
router scored against its experts."""

from kedro.pipeline import Node, Pipeline

from adapter_registry.pipelines.route.nodes import evaluate_routing_node, route_node


def create_pipeline() -> Pipeline:
    return Pipeline(
        [Node(route_node, ["recipe", "examples"], ["route", "routed_examples"], name="route_experts_node")]
    )


def create_evaluation_pipeline() -> Pipeline:
    """After evaluate: the router against its experts alone and a uniform mix (``routing.json``)."""
    return Pipeline(
        [
            Node(
                evaluate_routing_node,
                ["recipe", "trained_adapter", "route", "evaluation_report"],
                ["routed_evaluation", "routing_report"],
                name="evaluate_routing_node",
            )
        ]
    )
