"""Route: a router's experts resolved in the registry and pinned, its labels checked against them."""

from __future__ import annotations

import json
from typing import Any

from adapter_registry.recipes import Recipe
from adapter_registry.training.adapter import TrainedAdapter


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


def evaluate_routing_node(
    recipe: Recipe, trained: TrainedAdapter, route: dict[str, Any], evaluation: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The router evaluated as what it serves (``evaluation.routed``): routed answers vs each expert alone vs a
    uniform mix, on each expert's registered test set and their union, the router's accuracy and confusion, the
    gate. Returns the evaluation report with a ``routing`` summary and its figures among the registered metrics,
    and the full routing report (every row's answers) for ``routing.json``."""
    import tempfile
    from pathlib import Path

    from adapter_registry.bases.resolve import resolve_reference
    from adapter_registry.evaluation.routed import (
        TestRow,
        expected_answer,
        flat_routing_metrics,
        request_of,
        routing_report,
    )
    from adapter_registry.experts import registered_split
    from adapter_registry.registry.store import AdapterStore
    from adapter_registry.routing import decide, route_facts, route_text

    facts = route_facts(route["tags"])
    assert facts is not None
    store = AdapterStore.from_env()
    with tempfile.TemporaryDirectory(prefix=f"{recipe.name}-experts-") as tmp:
        folders: dict[str, Path] = {}
        rows: list[TestRow] = []
        for expert in facts.pinned:
            folders[expert.name] = Path(tmp) / expert.name
            version = store.pull(expert.ref, folders[expert.name])
            if expert.name in facts.names:  # the fallback answers; its test set is not the router's to score
                records, _, _ = registered_split(version, "test")
                records = records[
                    : recipe.evaluation.max_test_rows or None
                ]  # as each expert's evaluation caps it
                rows += [TestRow(expert.name, request_of(r), expected_answer(r)) for r in records]
        probabilities = router_probabilities(trained, [route_text(r.input) for r in rows], recipe.max_length)
        fallback = facts.fallback.name if facts.fallback is not None else None
        decisions = []
        for p in probabilities:
            d = decide(p, trained.labels, facts.threshold, fallback)
            decisions.append((d.adapter, d.top, d.confidence))
        config = json.loads((folders[facts.names[0]] / "adapter_config.json").read_text())
        base = resolve_reference(config["base_model_name_or_path"])
        report = routing_report(base.path, folders, rows, decisions, recipe.evaluation.bootstrap_samples)
    summary = {k: v for k, v in report.items() if k != "rows"}
    flat = {**evaluation["flat_metrics"], **flat_routing_metrics(report)}
    return {**evaluation, "routing": summary, "flat_metrics": flat}, report


def router_probabilities(trained: TrainedAdapter, texts: list[str], max_length: int) -> list[list[float]]:
    """The trained router's probability of each label (``trained.labels`` order) for each text."""
    import torch

    from adapter_registry.evaluation.evaluate import classifier_logits
    from adapter_registry.training.features import classification_features

    features = classification_features(texts, None, trained.tokenizer, max_length)
    with torch.no_grad():
        logits = classifier_logits(trained.model, features, trained.tokenizer.pad_token_id)
    return [[float(x) for x in row] for row in torch.softmax(torch.from_numpy(logits), dim=-1)]
