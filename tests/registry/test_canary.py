"""Canaries in a real sqlite registry: a start is gated and audited like a promotion, bad input changes nothing,
a second canary is refused (audited), an alias moved outside adapter-registry is not attested, and the policy's
decision, both ways, is written with its figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter_registry.canary import ArmFigures, CanaryPolicy, Share, decide
from adapter_registry.cli import app
from adapter_registry.registry import promotion
from adapter_registry.registry.audit import AuditLog
from adapter_registry.registry.canary import canary_state, start_canary
from adapter_registry.registry.entities import RegistryError
from adapter_registry.registry.policy import Actor, PromotionPolicy
from adapter_registry.registry.stages import open_canary
from adapter_registry.registry.store import AdapterStore
from adapter_registry.rollout import CanaryLook, act

from .conftest import GOOD_METRICS, lineage_tags

NAME = "support_sft_lora"
OPEN = {"policy": PromotionPolicy(enforce="never"), "actor": Actor("alice", False)}
POLICY = CanaryPolicy(min_requests=50).model_dump()
runner = CliRunner()


def staged(store: AdapterStore, adapter_dir: Path) -> None:
    """Version 1 in production, 2 in staging, 3 registered with failing gates."""
    for metrics in (GOOD_METRICS, GOOD_METRICS, {**GOOD_METRICS, "exact_match": 0.5}):
        store.register_adapter(NAME, adapter_dir, lineage_tags(), metrics)
    for ref, stage in ((f"{NAME}/1", "staging"), (f"{NAME}/1", "production"), (f"{NAME}/2", "staging")):
        promotion.promote(store, ref, stage, **OPEN)


def look(store: AdapterStore, candidate: tuple[int, int], production: tuple[int, int]) -> CanaryLook:
    canary, check = canary_state(store, NAME)
    assert canary is not None
    c = ArmFigures(canary.version, candidate[1], feedback=Share(*candidate))
    b = ArmFigures(canary.baseline, production[1], feedback=Share(*production))
    return CanaryLook(NAME, canary, check, c, b, decide(CanaryPolicy(**canary.policy), c, b))


def test_a_canary_start_is_gated_and_audited_and_bad_input_changes_nothing(
    store: AdapterStore, adapter_dir: Path
) -> None:
    from mlflow import MlflowClient

    staged(store, adapter_dir)
    audit = AuditLog(store)
    before = len(audit.read(NAME).events)
    for bad in (0, 100):
        with pytest.raises(
            RegistryError, match=rf"--canary {bad} is outside 1-99: give the share .* e\.g\. --canary 10"
        ):
            start_canary(store, f"{NAME}/2", bad, canary_policy=POLICY, **OPEN)
    with pytest.raises(RegistryError, match=r"exact_match >= 0\.8: exact_match = 0\.5"):
        start_canary(store, f"{NAME}/3", 10, canary_policy=POLICY, **OPEN)
    events = audit.read(NAME).events
    assert len(events) == before + 1 and events[-1].action == "refused" and events[-1].to_stage == "canary"
    assert store.holder(NAME, "canary") is None

    started = start_canary(store, f"{NAME}/2", 10, canary_policy=POLICY, **OPEN)
    assert started.action == "canary_start" and all(g.passed for g in started.gates)
    assert started.details["percent"] == 10 and started.details["baseline"] == 1
    assert started.details["policy"]["min_requests"] == 50
    canary, check = canary_state(store, NAME)
    assert canary is not None and canary.version == 2 and check.ok
    assert store.holder(NAME, "production").version == 1 and store.holder(NAME, "staging").version == 2  # type: ignore[union-attr]

    with pytest.raises(
        RegistryError, match=r"a canary of support_sft_lora is running: version 2 at 10%.*canary stop"
    ):
        start_canary(store, f"{NAME}/3", 20, force=True, reason="try", canary_policy=POLICY, **OPEN)
    refused = audit.read(NAME).events[-1]
    assert refused.action == "refused" and "a canary of support_sft_lora is running" in refused.reason

    MlflowClient(store.tracking_uri).set_registered_model_alias(
        NAME, "canary", "3"
    )  # outside adapter-registry
    _, moved = canary_state(store, NAME)
    assert not moved.ok and "the alias was moved outside adapter-registry" in (moved.problem or "")
    audited = runner.invoke(app, ["--tracking-uri", store.tracking_uri, "audit", NAME])
    assert audited.exit_code == 1 and "support_sft_lora@canary is held by version 3" in audited.stderr

    args = ["--tracking-uri", store.tracking_uri, "canary", "stop", NAME]
    assert "canary stop needs --reason" in runner.invoke(app, args).stderr
    stopped = runner.invoke(app, [*args, "--reason", "wrong candidate", "--json"])
    assert stopped.exit_code == 0, stopped.stderr
    assert open_canary(audit.read(NAME).events) is None and store.holder(NAME, "canary") is None
    assert audit.read(NAME).intact


def test_the_policy_decides_both_ways_and_the_trail_holds_the_figures(
    store: AdapterStore, adapter_dir: Path
) -> None:
    staged(store, adapter_dir)
    audit = AuditLog(store)
    start_canary(store, f"{NAME}/2", 25, canary_policy=POLICY, **OPEN)
    worse = look(store, candidate=(30, 60), production=(58, 60))
    assert worse.verdict is not None and worse.verdict.decision == "rollback"
    (closed,) = act(store, worse, **OPEN)
    assert closed.action == "canary_rollback" and closed.details["decision"] == "rollback"
    assert closed.details["figures"]["candidate"]["feedback"] == [30, 60]
    assert closed.details["verdict"]["upper"] < -0.02
    assert store.holder(NAME, "canary") is None and store.holder(NAME, "production").version == 1  # type: ignore[union-attr]

    start_canary(store, f"{NAME}/2", 25, canary_policy=POLICY, **OPEN)
    undecided = look(store, candidate=(5, 5), production=(5, 5))
    assert undecided.verdict is not None and undecided.verdict.decision == "continue"
    assert act(store, undecided, **OPEN) == []
    good = look(store, candidate=(590, 600), production=(580, 600))
    assert good.verdict is not None and good.verdict.decision == "promote"
    promoted, closed = act(store, good, **OPEN)
    assert promoted.action == "promote" and promoted.to_stage == "production" and promoted.version == 2
    assert promoted.reason.startswith(f"canary (event {good.canary.seq}) passed: feedback_accuracy")  # type: ignore[union-attr]
    assert closed.action == "canary_promote" and closed.details["promotion"] == promoted.seq
    assert closed.details["figures"]["production"]["feedback"] == [580, 600]
    checks = audit.stage_checks(NAME)
    assert checks["production"].ok and checks["production"].holder == 2 and audit.read(NAME).intact
    status = runner.invoke(app, ["--tracking-uri", store.tracking_uri, "canary", "status", NAME])
    assert status.exit_code == 0 and "no canary of support_sft_lora is running" in status.stdout
