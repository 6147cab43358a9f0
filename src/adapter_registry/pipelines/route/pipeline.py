"""Route: examples → pinned experts (the routing facts) + the examples training may use."""

from kedro.pipeline import Node, Pipeline

from adapter_registry.pipelines.route.nodes import route_node


def create_pipeline() -> Pipeline:
    return Pipeline(
        [Node(route_node, ["recipe", "examples"], ["route", "routed_examples"], name="route_experts_node")]
    )
