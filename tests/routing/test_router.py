"""A request router end to end: two generation experts trained on the tiny Llama and registered (with their data
splits in lineage), a ``routes_to:`` recipe run by ``kedro run`` (its rows derived from the experts' splits, the
classifier trained on the tiny BERT, registered with its experts as parents), then ``serve``'s ``{"route": ...}``
answered by the expert the router picks, under the expert's own contract. Bad routers register nothing.

Real peft, a real sqlite MLflow store in tmp_path, the real FastAPI app (TestClient); no mocks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.experts import derived_splits, resolve_route
from adapter_registry.pipeline_registry import recipe_pipeline
from adapter_registry.pipelines.route.nodes import route_node
from adapter_registry.recipes import RecipeError, parse_recipe
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.store import AdapterStore
from adapter_registry.routing import RoutingError, decide, route_facts
from helpers import (
    _drop_overlap,
    build_tiny_llama,
    classifier_recipe,
    support_rows,
    write_jsonl,
)
from serving.conftest import attest
from test_pipeline import kedro_run, make_project

from .conftest import ACME, WEATHER, expert_tags, register_expert


def lineage_of(version: Any) -> dict[str, str]:
    """The lineage tags of a version a test registers again as a new version (not those the store writes)."""
    return {
        k: v
        for k, v in version.tags.items()
        if k.startswith(("ar.base.", "ar.task", "ar.method", "ar.data."))
    }


def router_recipe(bert: Path, name: str = "support_router", **routes: Any) -> dict:
    recipe = classifier_recipe(bert, Path("unused"), name=name)
    del recipe["data"]  # derived from the experts' registered splits
    recipe["routes_to"] = {"experts": [f"{ACME}/1", f"{WEATHER}/1"], **routes}
    recipe["task"] = {"type": "sequence_classification", "neighbours": False}
    recipe["training"] = {**recipe["training"], "epochs": 2}
    recipe["evaluation"]["must_beat_base"] = False
    recipe["merge"] = {"enabled": False}
    return recipe


# ------------------------------------------------------------------------------------------------ schema
def test_routes_to_schema_and_pipeline(tiny_bert: Path) -> None:
    recipe = parse_recipe(router_recipe(tiny_bert, threshold=0.6, fallback=f"{ACME}/1"))
    assert recipe.derived_data and recipe.routed == "router"
    assert recipe.expert_refs == [f"{ACME}/1", f"{WEATHER}/1"]
    names = [n.name.rsplit(".", 1)[-1] for n in recipe_pipeline(recipe).nodes]
    assert names.index("route_experts_node") < names.index("train_adapter_node")


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        (
            {"threshold": 1.5, "fallback": f"{ACME}/1"},
            r"threshold 1.5 is not a probability: give a value in \[0, 1\]",
        ),
        ({"threshold": -0.1, "fallback": f"{ACME}/1"}, r"threshold -0.1 is not a probability"),
        ({"threshold": 0.5}, r"no 'fallback' answers then: name one"),
        ({"experts": [f"{ACME}/1", f"{ACME}@production"]}, r"\['acme_lora'\] listed twice"),
        ({"experts": [f"{ACME}/1", "weather"]}, r"are not registered adapters as NAME@STAGE"),
    ],
)
def test_bad_routes_to_blocks_are_refused_with_the_fix(tiny_bert: Path, routes: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        parse_recipe(router_recipe(tiny_bert, **routes))


def test_decide_takes_the_top_expert_or_abstains_to_the_fallback() -> None:
    assert decide([0.2, 0.8], ["a", "b"], 0.5, "a").adapter == "b"
    low = decide([0.45, 0.55], ["a", "b"], 0.6, "a")
    assert low.adapter == "a" and low.top == "b" and low.abstained and low.confidence == pytest.approx(0.55)
    assert decide([0.45, 0.55], ["a", "b"]).adapter == "b"  # no threshold: never abstains


# ------------------------------------------------------------------------------------------------ bad experts
def test_unknown_and_foreign_experts_are_refused_naming_the_fix(
    experts: dict, tiny_llama: Path, tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "mlflow.db"
    shutil.copy(experts["db"], db)
    store = AdapterStore(f"sqlite:///{db}")
    unknown = parse_recipe(router_recipe(tiny_bert, experts=[f"{ACME}/1", "nobody/1"])).routes_to
    assert unknown is not None
    with pytest.raises(
        RoutingError, match=r"expert nobody/1: .* \(registered adapters: acme_lora, weather_lora\)"
    ):
        resolve_route(store, unknown)
    other = build_tiny_llama(tmp_path / "other-llama", seed=1)
    data = tmp_path / "other-data"
    for split, n, s in (("train", 24, 5), ("validation", 6, 6), ("test", 6, 7)):
        write_jsonl(data / f"{split}.jsonl", support_rows(n, s))
    _drop_overlap(data, "prompt")
    register_expert(store, other, data, tmp_path / "elsewhere", "elsewhere_lora", 3)
    foreign = parse_recipe(router_recipe(tiny_bert, experts=[f"{ACME}/1", "elsewhere_lora/1"])).routes_to
    assert foreign is not None
    with pytest.raises(
        RoutingError, match=r"the experts are on different bases .* must be an adapter of the same base"
    ):
        resolve_route(store, foreign)
    store.register_adapter(
        "a_classifier",
        experts["root"] / ACME,
        {**expert_tags(tiny_llama, data), Tag.TASK: "sequence_classification"},
        {},
    )
    classifier = parse_recipe(router_recipe(tiny_bert, experts=[f"{ACME}/1", "a_classifier/1"])).routes_to
    assert classifier is not None
    with pytest.raises(
        RoutingError, match=r"a_classifier/1 is a sequence_classification adapter: .* name one of those"
    ):
        resolve_route(store, classifier)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with pytest.raises(
        RoutingError, match=r"recipe 'support_router': .*nobody/1.*\nnothing was trained or registered"
    ):
        route_node(parse_recipe(router_recipe(tiny_bert, experts=[f"{ACME}/1", "nobody/1"])), {"train": []})
    assert not store.model_exists("support_router")


def test_derived_rows_are_the_experts_requests_labelled_with_their_names(
    experts: dict, tiny_bert: Path
) -> None:
    spec = parse_recipe(router_recipe(tiny_bert)).routes_to
    assert spec is not None
    rows, versions = derived_splits(experts["store"], spec)
    assert {r["label"] for r in rows["train"]} == {ACME, WEATHER}
    assert any("weather" in r["text"] or "rain" in r["text"] for r in rows["test"] if r["label"] == WEATHER)
    assert set(versions) == {"train", "test"} and ";" in versions["train"]["path"]


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def routed(experts: dict, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``kedro run`` of a router recipe over the two experts; returns the project and its registry."""
    root = tmp_path_factory.mktemp("routed")
    db = root / "mlflow.db"
    shutil.copy(experts["db"], db)
    project = make_project(root / "project", [router_recipe(tiny_bert, threshold=0.55, fallback=f"{ACME}/1")])
    done = kedro_run(project, db)
    assert done.returncode == 0, done.stderr[-4000:]
    return {"project": project, "db": db, "store": AdapterStore(f"sqlite:///{db}"), "stdout": done.stdout}


@pytest.mark.slow
def test_kedro_run_registers_a_router_with_its_experts_as_parents(routed: dict) -> None:
    store = routed["store"]
    version = store.get_version("support_router", 1)
    parents = json.loads(version.tags[Tag.PARENTS])
    assert [p["version"] for p in parents] == [f"{ACME}/1", f"{WEATHER}/1"]
    for p in parents:
        expert = store.get_version(*p["version"].split("/"))
        assert p["digest"] == "sha256:" + expert.checksums["adapter_model.safetensors"]
    facts = route_facts(version.tags)
    assert facts is not None and facts.kind == "router" and facts.threshold == 0.55
    assert facts.fallback is not None and facts.fallback.ref == f"{ACME}/1"
    assert {"accuracy", "macro_f1"} <= set(version.metrics)
    assert version.tags[Tag.data_path("train")].count(";") == 1  # both experts' train files

    # evaluated as served: routed vs each expert alone vs a uniform mix, on each test set and the union
    report = json.loads((routed["project"] / "data/08_reporting/support_router/routing.json").read_text())
    sets = {ACME, WEATHER, "union"}
    assert set(report["systems"]) == {ACME, WEATHER, "uniform_mix", "routed"}
    assert all(set(v) == sets for v in report["systems"].values())
    n_union = report["systems"]["routed"]["union"]["n"]
    assert n_union == sum(report["systems"]["routed"][e]["n"] for e in (ACME, WEATHER)) == len(report["rows"])
    router = report["router"]
    assert set(router["confusion"]) == {ACME, WEATHER}
    assert sum(sum(c.values()) for c in router["confusion"].values()) == n_union
    correct = sum(router["confusion"][e].get(e, 0) for e in (ACME, WEATHER))
    assert router["accuracy"] == pytest.approx(correct / n_union)
    for row in report["rows"]:  # the routed answer is the chosen expert's own answer to that row
        assert row["routed"] == row[row["routed_to"]]
    assert set(report["gate"]["sets"]) == sets and isinstance(report["gate"]["passed"], bool)
    assert version.metrics["routing.router_accuracy"] == pytest.approx(router["accuracy"])
    assert version.metrics["routing.gate_passed"] in (0.0, 1.0)
    assert "routing.uniform_mix.union.exact_match" in version.metrics


@pytest.mark.slow
def test_serve_routes_a_request_to_the_expert_the_router_picks(routed: dict, tiny_llama: Path) -> None:
    from adapter_registry.pyfunc import AdapterModel
    from adapter_registry.serving.app import create_app
    from adapter_registry.serving.pool import AdapterPool
    from adapter_registry.serving.sync import RegistrySource

    store = routed["store"]
    for name in (ACME, WEATHER, "support_router"):
        attest(store, name, 1)
    store.pull("support_router/1", routed["project"] / "pulled")
    router = AdapterModel(routed["project"] / "pulled")
    pool = AdapterPool.from_pretrained(tiny_llama, fingerprint=describe_folder(tiny_llama).fingerprint)
    with TestClient(create_app(pool, RegistrySource(store), poll_seconds=60)) as client:
        listed = client.get("/v1/adapters").json()
        assert [r["name"] for r in listed["routers"]] == ["support_router"]
        assert listed["routers"][0]["problem"] is None
        for text in ("will it rain in oslo on friday", "please refund order 123"):
            answer = client.post("/v1/generate", json={"route": "support_router", "input": text})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            (probabilities,) = router.probabilities([text])
            expected = decide(probabilities, list(router.labels), 0.55, ACME)
            route = body["route"]
            assert route["expert"] == expected.adapter == body["adapter"]
            assert route["confidence"] == pytest.approx(expected.confidence, abs=1e-5)
            assert route["router_version"] == 1 and route["expert_version"] == 1 and route["pinned"]
            assert body["version"] == 1 and body["digest"].startswith("sha256:")
            assert answer.headers["X-Router-Name"] == "support_router"
            direct = client.post("/v1/generate", json={"adapter": expected.adapter, "input": text}).json()
            assert direct["text"] == body["text"]  # the expert answered under its own contract

        both = client.post("/v1/generate", json={"route": "support_router", "adapter": ACME, "input": "hi"})
        assert both.status_code == 400
        assert "names both 'route' ('support_router') and 'adapter'" in both.json()["detail"]
        prompt = client.post("/v1/generate", json={"route": "support_router", "prompt": "hi"})
        assert prompt.status_code == 400 and "gives 'input'" in prompt.json()["detail"]
        unknown = client.post("/v1/generate", json={"route": "nobody", "input": "hi"})
        assert unknown.status_code == 404 and "routers served: ['support_router']" in unknown.json()["detail"]

        # an expert moved on (a new version, or a rollback): the router says so, and still routes
        store.pull(f"{WEATHER}/1", routed["project"] / "w2")
        store.register_adapter(
            WEATHER, routed["project"] / "w2", lineage_of(store.get_version(WEATHER, 1)), {}
        )
        attest(store, WEATHER, 2)
        client.app.state.service.sync.sync()  # type: ignore[attr-defined]
        (listed,) = client.get("/v1/adapters").json()["routers"]
        assert "weather_lora serves version 2, the router pinned 1" in listed["problem"]
        health = client.get("/health").json()
        assert health["status"] == "degraded"
        assert any(p["adapter"] == "support_router" for p in health["problems"])
        answer = client.post(
            "/v1/generate", json={"route": "support_router", "input": "will it rain in rome"}
        )
        assert answer.status_code == 200
        if answer.json()["route"]["expert"] == WEATHER:
            assert answer.json()["route"]["expert_version"] == 2 and not answer.json()["route"]["pinned"]


def test_a_data_block_whose_labels_are_not_the_experts_is_refused(tiny_bert: Path) -> None:
    from adapter_registry.experts import check_labels

    spec = parse_recipe(router_recipe(tiny_bert)).routes_to
    assert spec is not None
    check_labels(spec, {"train": {ACME, WEATHER}, "test": {WEATHER}})
    with pytest.raises(
        RoutingError, match=r"train labels \['billing'\] are no expert .* fix the data's labels"
    ):
        check_labels(spec, {"train": {ACME, WEATHER, "billing"}})
    with pytest.raises(RoutingError, match=r"experts \['weather_lora'\] have no training row"):
        check_labels(spec, {"train": {ACME}})


@pytest.mark.slow
def test_promoting_a_router_needs_its_experts_in_the_stage_and_compat_checks_each(
    routed: dict, tiny_llama: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from adapter_registry.cli import app
    from adapter_registry.registry import promotion
    from adapter_registry.registry.entities import RegistryError
    from adapter_registry.registry.policy import Actor, PromotionPolicy
    from adapter_registry.registry.routed import routing_gates

    db = tmp_path / "mlflow.db"
    shutil.copy(routed["db"], db)
    store = AdapterStore(f"sqlite:///{db}")
    router = store.get_version("support_router", 1)
    gates = {g.gate: g for g in routing_gates(store, router, "staging")}
    assert not gates[f"expert {ACME} holds staging"].passed
    assert "promote acme_lora/1 to staging first" in gates[f"expert {ACME} holds staging"].detail
    policy, actor = PromotionPolicy(enforce="never"), Actor("tester", False)
    with pytest.raises(
        RegistryError, match=r"expert acme_lora holds staging: no attested version .* promote"
    ):
        promotion.promote(store, "support_router/1", "staging", policy=policy, actor=actor)
    for name in (ACME, WEATHER):
        attest(store, name, 1, "staging")
    gates = {g.gate: g for g in routing_gates(store, router, "staging")}
    assert gates[f"expert {ACME} holds staging"].passed and gates[f"expert {WEATHER} holds staging"].passed
    routing_gate = gates["routed no worse than each expert, better on the union"]
    assert routing_gate.passed == (router.metrics["routing.gate_passed"] == 1.0)
    store.pull(f"{WEATHER}/1", tmp_path / "w2")
    store.register_adapter(WEATHER, tmp_path / "w2", lineage_of(store.get_version(WEATHER, 1)), {})
    attest(store, WEATHER, 2, "staging")
    moved = {g.gate: g for g in routing_gates(store, router, "staging")}[f"expert {WEATHER} holds staging"]
    assert (
        not moved.passed and "staging holds weather_lora/2, the router pinned weather_lora/1" in moved.detail
    )

    result = CliRunner().invoke(
        app, ["--tracking-uri", f"sqlite:///{db}", "compat", "support_router/1", "--base", str(tiny_llama),
              "--json"],
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert result.exit_code == 0, result.output
    assert report["outcome"] == "compatible"
    experts_checked = {c["name"].split(":")[0] for c in report["checks"]}
    assert experts_checked == {f"expert {ACME}/1", f"expert {WEATHER}/1"}

    tree = CliRunner().invoke(app, ["--tracking-uri", f"sqlite:///{db}", "lineage", "support_router/1"])
    assert tree.exit_code == 0, tree.output
    assert f"{ACME}/1 expert" in tree.stdout and f"{WEATHER}/1 expert" in tree.stdout
    graph = CliRunner().invoke(
        app, ["--tracking-uri", f"sqlite:///{db}", "lineage", "support_router/1", "--format", "mermaid"]
    )
    assert f"parent {ACME}/1<br/>expert" in graph.stdout and "-->|routes to| run" in graph.stdout
