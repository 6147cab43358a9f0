"""Route: a router's experts resolved in the registry and pinned, its labels checked against them."""

from __future__ import annotations

from typing import Any

from adapter_registry.recipes import Recipe


def route_node(recipe: Recipe, examples: dict[str, list[Any]]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The router's routing facts (``ar.route.*`` tags and its experts as lineage parents) and its examples, handed
    on to training only once every expert resolved to a registered generation adapter of one base and the labels
    are exactly the experts' names (``experts.resolve_route``, ``experts.check_labels``): a bad router trains and
    registers nothing."""
    from adapter_registry.experts import check_labels, resolve_route
    from adapter_registry.registry.store import AdapterStore
    from adapter_registry.routing import RoutingError, route_parents, route_tags

    spec = recipe.routes_to
    assert spec is not None, f"recipe {recipe.name!r} has no routes_to block"
    try:
        facts, _ = resolve_route(AdapterStore.from_env(), spec)
        check_labels(spec, {split: {e.label for e in rows} for split, rows in examples.items()})
    except RoutingError as exc:
        raise RoutingError(f"recipe {recipe.name!r}: {exc}\nnothing was trained or registered") from None
    return {"tags": route_tags(facts), "parents": route_parents(facts)}, examples
