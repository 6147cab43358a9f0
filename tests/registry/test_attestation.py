"""The registry is the one truth of stages, checked against the audit trail: an alias moved outside
adapter-registry (here with MLflow's own client, no CLI) is reported, not trusted; history and time travel."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

from typer.testing import CliRunner

from adapter_registry.cli import app
from adapter_registry.registry import promotion
from adapter_registry.registry.audit import AuditLog
from adapter_registry.registry.entities import RegistryError
from adapter_registry.registry.policy import Actor, PromotionPolicy
from adapter_registry.registry.store import AdapterStore

from .conftest import GOOD_METRICS, lineage_tags

NAME = "support_sft_lora"
OPEN = {"policy": PromotionPolicy(enforce="never"), "actor": Actor("alice", False)}
WEAK = {**GOOD_METRICS, "exact_match": 0.5, "beats_base": 0.0}
runner = CliRunner()


def cli(store: AdapterStore, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--tracking-uri", store.tracking_uri, *args])
    return result.exit_code, result.stdout, result.stderr


def now() -> dt.datetime:
    time.sleep(0.01)  # events are timestamped to the microsecond; keep "before" and "after" apart
    stamp = dt.datetime.now(dt.UTC)
    time.sleep(0.01)
    return stamp


def test_an_alias_moved_outside_the_cli_is_unattested_everywhere(
    store: AdapterStore, adapter_dir: Path
) -> None:
    from mlflow import MlflowClient

    for metrics in (GOOD_METRICS, WEAK, GOOD_METRICS):
        store.register_adapter(NAME, adapter_dir, lineage_tags(), metrics)
    before_any = now()
    promotion.promote(store, f"{NAME}/1", "staging", **OPEN)
    promotion.promote(store, f"{NAME}/1", "production", **OPEN)
    v1_in_production = now()
    try:
        promotion.promote(store, f"{NAME}/2", "staging", **OPEN)
        raise AssertionError("version 2 must fail its gates")
    except RegistryError as exc:
        assert exc.code == "GATE_FAILED"
    code, _, _ = cli(store, "audit", NAME)
    assert code == 0  # everything so far went through the gates and the trail

    # someone with EDIT moves production to the version whose promotion was refused, with MLflow's own client
    MlflowClient(store.tracking_uri).set_registered_model_alias(NAME, "production", "2")
    assert store.holder(NAME, "production").version == 2  # the registry is the truth of who holds it ...

    code, out, err = cli(store, "audit", NAME, "--json")  # ... and audit says it is not attested
    assert code == 1
    report = json.loads(out)
    assert report["intact"] is True and report["attested"] is False
    assert report["stages"]["production"]["holder"] == 2 and report["stages"]["production"]["attested"] == 1
    assert f"{NAME}@production is held by version 2, which no audited" in err
    assert "the last audited promotion placed version 1" in err

    code, out, err = cli(store, "list", "--json")
    listed = {v["version"]: v for v in json.loads(out)}
    assert code == 0 and (listed[2]["stage"], listed[2]["attested"]) == ("production", False)
    assert (listed[1]["stage"], listed[1]["attested"]) == (
        "candidate",
        None,
    )  # lost its alias; nothing archived it
    assert listed[3]["attested"] is None  # a candidate needs no attestation
    code, out, err = cli(store, "list")
    assert "UNATTESTED" in out and "which no audited" in err
    code, out, err = cli(store, "show", f"{NAME}@production")
    assert code == 0 and "UNATTESTED" in out

    # time travel: who held production then, from the verified trail
    code, out, _ = cli(store, "history", NAME, "--at", before_any.isoformat())
    assert code == 0 and "no version of support_sft_lora held staging or production" in out
    code, out, _ = cli(store, "history", NAME, "--at", v1_in_production.isoformat(), "--json")
    assert code == 0 and json.loads(out)["stages"]["production"]["version"] == 1
    code, out, _ = cli(store, "history", NAME, "--json")
    actions = [(e["action"], e["version"], e["to_stage"]) for e in json.loads(out)["events"]]
    assert actions == [("promote", 1, "staging"), ("promote", 1, "production"), ("refused", 2, "staging")]
    code, _, err = cli(store, "history", NAME, "--at", "yesterday")
    assert code == 1 and "--at 'yesterday' is not an ISO time" in err

    # rollback to the holder at a time: audited and gated, and the registry is attested again
    code, out, err = cli(store, "rollback", NAME, "--stage", "production", "--to-time",
                         v1_in_production.isoformat(), "--policy", str(_open_policy(adapter_dir)), "--json")  # fmt: skip
    assert code == 0, err
    event = json.loads(out)
    assert (event["action"], event["version"], event["replaced_version"]) == ("rollback", 1, 2)
    assert "back to the holder at" in event["reason"]
    assert store.holder(NAME, "production").version == 1
    assert store.get_version(NAME, 2).stage == "archived"
    code, _, err = cli(store, "audit", NAME)
    assert code == 0, err
    assert AuditLog(store).stage_checks(NAME)["production"].ok


def _open_policy(folder: Path) -> Path:
    path = folder.parent / "open-policy.yml"
    path.write_text("enforce: never\n")
    return path


def test_a_rollback_to_a_version_that_fails_its_gates_is_refused_and_audited(
    store: AdapterStore, adapter_dir: Path
) -> None:
    store.register_adapter(NAME, adapter_dir, lineage_tags(), WEAK)
    store.register_adapter(NAME, adapter_dir, lineage_tags(), GOOD_METRICS)
    forced = {**OPEN, "force": True, "reason": "demo"}
    promotion.promote(store, f"{NAME}/1", "production", **forced)  # forced past its gates, audited
    then = now()
    promotion.promote(store, f"{NAME}/2", "staging", **OPEN)
    promotion.promote(store, f"{NAME}/2", "production", **OPEN)
    try:
        promotion.rollback(store, NAME, "production", to_time=then, **OPEN)
        raise AssertionError("version 1 fails its gates")
    except RegistryError as exc:
        assert exc.code == "GATE_FAILED" and "exact_match >= 0.8" in exc.message
    assert store.holder(NAME, "production").version == 2
    assert AuditLog(store).read(NAME).events[-1].action == "refused"
    event = promotion.rollback(
        store, NAME, "production", to_time=then, force=True, reason="incident 7", **OPEN
    )
    assert event.forced and event.version == 1 and store.holder(NAME, "production").version == 1
