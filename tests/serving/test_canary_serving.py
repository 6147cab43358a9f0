"""A canary for real: a uvicorn replica on 127.0.0.1 announcing itself in a sqlite registry, a candidate answering
its share of requests (sticky per user, named by its own version and digest), feedback, live figures, then
``canary watch`` deciding from the fleet's figures and the replica following; a shadowed canary only records."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.cli import app
from adapter_registry.registry import promotion
from adapter_registry.registry.canary import start_canary
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.policy import Actor, PromotionPolicy
from adapter_registry.registry.store import AdapterStore
from adapter_registry.serving.app import ServeOptions

from .conftest import serve_in_thread
from .test_app import free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]
OPEN = {"policy": PromotionPolicy(enforce="never"), "actor": Actor("alice", False)}
PROMPT = "a b c 1 2 3"
runner = CliRunner()


def put(store: AdapterStore, folder: Path, fingerprint: str, *stages: str) -> int:
    """Register ``folder`` as a new version of alpha (it beats its base) and promote it through ``stages``."""
    tags = {Tag.BASE_FINGERPRINT: fingerprint, Tag.TASK: "causal_lm_sft", Tag.METHOD: "lora"}
    version = store.register_adapter("alpha", folder, tags=tags, metrics={"beats_base": 1.0}).version
    for stage in stages:
        promotion.promote(store, f"alpha/{version}", stage, **OPEN)
    return version


@pytest.fixture
def replica(
    registry: AdapterStore, tiny_base: Path, adapters: dict[str, Path], tmp_path: Path
) -> Iterator[str]:
    put(registry, adapters["alpha"], describe_folder(tiny_base).fingerprint, "staging", "production")
    port = free_port()
    options = ServeOptions(
        tracking_uri=registry.tracking_uri, port=port, poll_seconds=0.3, heartbeat_seconds=0.5,
        request_log=None, tenants_file=tmp_path / "none.yml",
    )  # fmt: skip
    (tmp_path / "none.yml").write_text("tenants: {}\n")
    with serve_in_thread(tiny_base, options):
        yield f"http://127.0.0.1:{port}"


def until(url: str, check: Any, what: str, seconds: float = 30) -> dict[str, Any]:
    deadline = time.time() + seconds
    while True:
        health = httpx.get(f"{url}/health").json()
        if check(health):
            return health
        assert time.time() < deadline, f"{what}: {health}"
        time.sleep(0.1)


def ask(url: str, user: str) -> dict[str, Any]:
    answer = httpx.post(f"{url}/v1/generate", json={"adapter": "alpha", "prompt": PROMPT, "max_new_tokens": 4,
                                                    "user": user}, timeout=60)  # fmt: skip
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def cli(store: AdapterStore, *args: str) -> Any:
    return runner.invoke(app, ["--tracking-uri", store.tracking_uri, *args])


def test_a_canary_answers_its_share_and_the_watcher_promotes_it_on_feedback(
    replica: str, registry: AdapterStore, tiny_base: Path, adapters: dict[str, Path]
) -> None:
    fingerprint = describe_folder(tiny_base).fingerprint
    put(registry, adapters["beta"], fingerprint, "staging")
    policy = {"metric": "feedback_accuracy", "min_requests": 8, "max_requests": 1000, "allowed_drop": 0.1,
              "confidence": 0.9, "max_error_increase": 0.05}  # fmt: skip
    start_canary(registry, "alpha/2", 50, canary_policy=policy, **OPEN)
    until(replica, lambda h: "alpha" in h["canaries"], "the canary was not picked up")

    answers = {f"user-{i}": ask(replica, f"user-{i}") for i in range(30)}
    by_version = {v: [a for a in answers.values() if a["version"] == v] for v in (1, 2)}
    assert 5 <= len(by_version[2]) <= 25 and len(by_version[1]) + len(by_version[2]) == 30
    digests = {
        v: f"sha256:{registry.get_version('alpha', v).checksums['adapter_model.safetensors']}" for v in (1, 2)
    }
    for version, given in by_version.items():
        assert {(a["adapter"], a["digest"], a["canary"]) for a in given} == {
            ("alpha", digests[version], "candidate" if version == 2 else "production")
        }
    assert {ask(replica, user)["version"] for user in list(answers)[:10]} == {
        answers[user]["version"] for user in list(answers)[:10]
    } and all(ask(replica, u)["version"] == answers[u]["version"] for u in list(answers)[:5])  # sticky
    inner = httpx.post(f"{replica}/v1/generate", json={"adapter": "alpha:canary", "prompt": PROMPT})
    assert inner.status_code == 404 and "answers only through its adapter's name" in inner.text

    for a in answers.values():  # users say the candidate is right and production wrong
        label = a["text"].strip() if a["version"] == 2 else "wrong"
        verdict = httpx.post(f"{replica}/v1/feedback", json={"request_id": a["request_id"], "label": label})
        assert verdict.status_code == 200 and verdict.json()["counted"], verdict.text
    again = httpx.post(f"{replica}/v1/feedback", json={"request_id": a["request_id"], "correct": True})
    assert again.status_code == 409 and "it counts once" in again.text
    unknown = httpx.post(f"{replica}/v1/feedback", json={"request_id": "nope", "correct": True})
    assert unknown.status_code == 404 and "was not answered by this replica" in unknown.text
    both = httpx.post(f"{replica}/v1/feedback", json={"request_id": "x", "correct": True, "label": "y"})
    assert both.status_code == 422 and "exactly one of 'correct'" in both.text
    figures = httpx.get(f"{replica}/v1/canary").json()["canaries"]["alpha"]["versions"]
    assert figures["2"]["feedback"] == [len(by_version[2]), len(by_version[2])]
    assert figures["1"]["feedback"][0] == 0 and figures["1"]["requests"] >= len(by_version[1])

    status = cli(registry, "canary", "status", "alpha", "--json")
    assert status.exit_code == 0, status.stderr
    assert '"decision": "promote"' in status.stdout
    watched = cli(registry, "canary", "watch", "alpha", "--interval", "0.2", "--timeout", "30")
    assert watched.exit_code == 0, watched.stderr
    assert registry.holder("alpha", "production").version == 2  # type: ignore[union-attr]
    until(replica, lambda h: not h["canaries"], "the promoted canary kept routing")
    assert ask(replica, "user-0")["version"] == 2 and "canary" not in ask(replica, "user-0")


def test_a_shadowed_canary_only_records_its_answers(
    replica: str, registry: AdapterStore, tiny_base: Path, adapters: dict[str, Path]
) -> None:
    put(registry, adapters["rs"], describe_folder(tiny_base).fingerprint, "staging")
    assert cli(registry, "promote", "alpha/2", "--to", "production", "--canary", "99", "--shadow",
               "--wait", "--timeout", "30").exit_code == 0  # fmt: skip
    answers = [ask(replica, f"u{i}") for i in range(12)]
    assert {(a["version"], a["canary"]) for a in answers} == {(1, "production")}
    deadline = time.time() + 30
    while True:
        report = httpx.get(f"{replica}/v1/canary").json()["canaries"]["alpha"]
        agreement = report["versions"]["2"]["agreement"]
        if agreement[1] >= 10:
            break
        assert time.time() < deadline, report
        time.sleep(0.2)
    assert (
        report["shadow"] and report["mirrored"] >= 10 and agreement[0] < agreement[1]
    )  # rs answers otherwise
    assert cli(registry, "canary", "stop", "alpha", "--reason", "seen enough").exit_code == 0
