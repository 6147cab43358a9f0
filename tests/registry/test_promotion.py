"""Stages, gates, rollback, the audit chain and the policy, on a real sqlite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapter_registry.registry import promotion
from adapter_registry.registry.audit import AuditLog, Head, link, signed_chain
from adapter_registry.registry.entities import AuditTag, RegistryError, StageChange, Tag
from adapter_registry.registry.policy import Actor, PromotionPolicy, StageRule, load_policy, policy_for
from adapter_registry.registry.store import AdapterStore

from .conftest import GOOD_METRICS, lineage_tags

OPEN = PromotionPolicy(enforce="never")
ME = Actor("alice", False)
NAME = "support_sft_lora"


def add(store: AdapterStore, adapter_dir: Path, metrics=GOOD_METRICS, **tags: str) -> int:
    return store.register_adapter(NAME, adapter_dir, {**lineage_tags(), **tags}, metrics).version


def promote(store: AdapterStore, ref: str, to: str, **kw):
    return promotion.promote(store, ref, to, policy=kw.pop("policy", OPEN), actor=kw.pop("actor", ME), **kw)


def stages(store: AdapterStore) -> dict[int, str]:
    return {v.version: v.stage for v in store.list_versions(name=NAME)}


def test_promote_through_stages_archives_and_rolls_back(store: AdapterStore, adapter_dir: Path) -> None:
    for _ in range(3):
        add(store, adapter_dir)
    event = promote(store, f"{NAME}/1", "staging", reason="looks good")
    assert [g.passed for g in event.gates] == [True, True, True]
    assert (event.seq, event.from_stage, event.to_stage, event.who) == (1, "candidate", "staging", "alice")
    promote(store, f"{NAME}@staging", "production")
    assert stages(store) == {1: "production", 2: "candidate", 3: "candidate"}
    assert store.holder(NAME, "staging") is None
    promote(store, f"{NAME}/2", "staging")
    promote(store, f"{NAME}/2", "production")
    promote(store, f"{NAME}/3", "staging")
    promote(store, f"{NAME}/3", "production")
    assert stages(store) == {1: "archived", 2: "archived", 3: "production"}

    back = promotion.rollback(store, NAME, "production", reason="incident 42", policy=OPEN, actor=ME)
    assert (back.version, back.replaced_version, back.action) == (2, 3, "rollback")
    assert store.holder(NAME, "production").version == 2
    promotion.rollback(store, NAME, "production", policy=OPEN, actor=ME)
    assert stages(store) == {1: "production", 2: "archived", 3: "archived"}
    with pytest.raises(RegistryError, match=rf"rollback of {NAME}@production: no earlier version"):
        promotion.rollback(store, NAME, "production", policy=OPEN, actor=ME)

    trail = AuditLog(store).read(NAME)
    assert trail.intact, trail.problems
    assert [(e.seq, e.action, e.version) for e in trail.events][-3:] == [
        (6, "promote", 3), (7, "rollback", 2), (8, "rollback", 1),
    ]  # fmt: skip


def test_gates_refuse_and_force_needs_reason(store: AdapterStore, adapter_dir: Path) -> None:
    weak = {**GOOD_METRICS, "exact_match": 0.5, "beats_base": 0.0}
    add(store, adapter_dir, metrics=weak)
    with pytest.raises(
        RegistryError, match=r"refused: exact_match >= 0.8: exact_match = 0.5; beats the base"
    ) as info:
        promote(store, f"{NAME}/1", "staging")
    assert info.value.code == "GATE_FAILED"
    with pytest.raises(RegistryError, match=r"--force needs --reason"):
        promote(store, f"{NAME}/1", "staging", force=True)
    assert stages(store) == {1: "candidate"}
    (refused,) = AuditLog(store).read(NAME).events  # the refusal is on record, the bad --force call is not
    assert (refused.action, refused.to_stage, [g.passed for g in refused.gates]) == (
        "refused", "staging", [False, False, True],
    )  # fmt: skip
    assert refused.reason.startswith("gates failed: exact_match >= 0.8")

    event = promote(store, f"{NAME}/1", "staging", force=True, reason="demo for the board")
    assert event.forced and [g.passed for g in event.gates] == [False, False, True]
    trail = AuditLog(store).read(NAME)
    assert trail.intact and [e.action for e in trail.events] == ["refused", "promote"]


def test_gate_on_unrecorded_metric_and_production_only_from_staging(
    store: AdapterStore, adapter_dir: Path
) -> None:
    add(store, adapter_dir, **{Tag.GATES: json.dumps(["accuracy >= 0.8"])})
    with pytest.raises(RegistryError, match=r"metric 'accuracy' not recorded \(recorded: base.exact_match"):
        promote(store, f"{NAME}/1", "staging")
    add(store, adapter_dir)
    with pytest.raises(RegistryError, match=r"production only from staging: current stage: candidate"):
        promote(store, f"{NAME}/2", "production")
    assert stages(store) == {1: "candidate", 2: "candidate"}


def test_bad_stage_same_stage_and_no_history(store: AdapterStore, adapter_dir: Path) -> None:
    add(store, adapter_dir)
    with pytest.raises(RegistryError, match=r"cannot promote to 'prod'"):
        promote(store, f"{NAME}/1", "prod")
    with pytest.raises(RegistryError, match=r"cannot promote to 'candidate'"):
        promote(store, f"{NAME}/1", "candidate")
    promote(store, f"{NAME}/1", "staging")
    with pytest.raises(RegistryError, match=rf"{NAME}/1 already holds stage 'staging'"):
        promote(store, f"{NAME}/1", "staging")
    with pytest.raises(RegistryError, match=rf"rollback of {NAME}@production: no version holds production"):
        promotion.rollback(store, NAME, "production", policy=OPEN, actor=ME)
    with pytest.raises(RegistryError, match=rf"rollback of {NAME}@staging: no earlier version"):
        promotion.rollback(store, NAME, "staging", policy=OPEN, actor=ME)
    with pytest.raises(RegistryError, match=r"adapter 'ghost' is not registered"):
        promotion.rollback(store, "ghost", "production", policy=OPEN, actor=ME)


def test_other_base_fails_the_serving_gate(store: AdapterStore, adapter_dir: Path) -> None:
    add(store, adapter_dir)
    promote(store, f"{NAME}/1", "staging")
    add(store, adapter_dir, **{Tag.BASE_ID: "bigger-base", Tag.BASE_FINGERPRINT: "sha256:" + "9" * 64})
    with pytest.raises(RegistryError, match=r"serves the staging base: staging serves base tiny-llama"):
        promote(store, f"{NAME}/2", "staging")


def test_policy_refusal_is_audited(store: AdapterStore, adapter_dir: Path) -> None:
    add(store, adapter_dir)
    policy = PromotionPolicy(stages={"production": StageRule(allowed_users=["admin"])})
    promote(store, f"{NAME}/1", "staging", policy=policy, actor=Actor("bob", True))
    with pytest.raises(
        RegistryError, match=r"refused: user 'bob' may not promote to production: .* allows admin"
    ):
        promote(store, f"{NAME}/1", "production", policy=policy, actor=Actor("bob", True))
    # not authenticated (local sqlite): auth_server policies do not apply
    promote(store, f"{NAME}/1", "production", policy=policy, actor=Actor("bob", False))
    actions = [(e.action, e.who, e.to_stage) for e in AuditLog(store).read(NAME).events]
    assert actions == [
        ("promote", "bob", "staging"),
        ("refused", "bob", "production"),
        ("promote", "bob", "production"),
    ]


def test_shipped_policy_loads_and_bad_policy_is_named(tmp_path: Path) -> None:
    shipped = Path(__file__).parents[2] / "conf" / "base" / "promotion_policy.yml"
    assert load_policy(shipped).stages["production"].allowed_users == ["admin"]
    bad = tmp_path / "p.yml"
    bad.write_text("stages:\n  production:\n    allowed: [x]\n")
    with pytest.raises(RegistryError, match=r"promotion policy '.*p.yml' is invalid"):
        load_policy(bad)


def test_audit_detects_deleted_and_rewritten_events(store: AdapterStore, adapter_dir: Path) -> None:
    add(store, adapter_dir)
    add(store, adapter_dir)
    promote(store, f"{NAME}/1", "staging")
    promote(store, f"{NAME}/2", "staging")
    promote(store, f"{NAME}/2", "production")
    assert AuditLog(store).read(NAME).intact
    # tamper behind our back, through MLflow itself (the CLI offers no way to do this)
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(store.tracking_uri)
    experiment = client.get_experiment_by_name("adapter-registry-audit")
    runs = {
        r.data.tags[AuditTag.SEQ]: r
        for r in client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    }
    event = json.loads(runs["1"].data.tags[AuditTag.EVENT])
    client.set_tag(runs["1"].info.run_id, AuditTag.EVENT, json.dumps({**event, "who": "mallory"}))
    client.delete_run(runs["2"].info.run_id)
    trail = AuditLog(store).read(NAME)
    assert [e.seq for e in trail.events] == [1, 2, 3]  # the deleted event is still shown
    assert [e.verified for e in trail.events] == [False, False, True]
    assert trail.problems == (
        "event 1 was rewritten or the chain before it was broken",
        "event 2 was deleted in MLflow (kept here, marked unverified)",
    )


def _stored(store: AdapterStore, version: int) -> Path:
    """The folder holding the registered files of ``version`` (a local artifact store)."""
    return Path(store.get_version(NAME, version).source.removeprefix("file://"))


def test_promotion_verifies_every_file_and_refuses_tampered_or_deleted_ones(
    store: AdapterStore, adapter_dir: Path
) -> None:
    for _ in range(3):
        add(store, adapter_dir)
    weights = _stored(store, 1) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x07")
    (_stored(store, 2) / "README.md").unlink()
    import shutil

    shutil.rmtree(_stored(store, 3))
    expected = {
        1: r"file 'adapter_model.safetensors' has sha256 \w+…, registered \w+…",
        2: r"file 'README.md' is missing",
        3: r"file '[\w.]+' is missing|its files cannot be downloaded",
    }
    for version, problem in expected.items():
        with pytest.raises(
            RegistryError, match=rf"promotion of {NAME}/{version} to staging refused: {problem}"
        ) as info:
            promote(store, f"{NAME}/{version}", "staging", force=True, reason="gates do not cover bytes")
        assert info.value.code == "CORRUPTED"
    assert stages(store) == {1: "candidate", 2: "candidate", 3: "candidate"}  # nothing moved
    refusals = AuditLog(store).read(NAME).events
    assert [(e.action, e.version) for e in refusals] == [("refused", 1), ("refused", 2), ("refused", 3)]
    assert "adapter_model.safetensors" in refusals[0].reason and "README.md" in refusals[1].reason


def test_rollback_verifies_the_files_too(store: AdapterStore, adapter_dir: Path) -> None:
    add(store, adapter_dir)
    add(store, adapter_dir)
    for version in (1, 2):
        promote(store, f"{NAME}/{version}", "staging")
        promote(store, f"{NAME}/{version}", "production")
    (_stored(store, 1) / "adapter_config.json").write_text("{}")
    with pytest.raises(
        RegistryError, match=rf"rollback of {NAME}/1 to production refused: file 'adapter_config.json'"
    ):
        promotion.rollback(store, NAME, "production", policy=OPEN, actor=ME)
    assert store.holder(NAME, "production").version == 2


def test_a_version_without_a_base_fingerprint_is_not_promoted(store: AdapterStore, adapter_dir: Path) -> None:
    add(store, adapter_dir, **{Tag.BASE_FINGERPRINT: ""})
    with pytest.raises(
        RegistryError, match=rf"promotion of {NAME}/1 to staging refused: no base fingerprint"
    ):
        promote(store, f"{NAME}/1", "staging", force=True, reason="try")
    assert AuditLog(store).read(NAME).events[-1].action == "refused"


def test_a_signed_chain_names_what_was_forged_edited_or_deleted() -> None:
    """The server's check of its trail (registry.auth_app runs it with its key and recorded head)."""
    import dataclasses
    import datetime as dt

    key, runs, prev_hash, prev_mac = b"k" * 64, [], "", ""
    for seq in (1, 2, 3):
        event = StageChange(model="m", version=seq, from_stage="candidate", to_stage="staging", who="alice",
                            when=dt.datetime(2026, 1, seq, tzinfo=dt.UTC), seq=seq)  # fmt: skip
        tags = link(event, prev_hash, key, prev_mac)
        runs.append((tags, False))
        prev_hash, prev_mac = tags[AuditTag.HASH], tags[AuditTag.MAC]
    head = Head(3, prev_mac, prev_hash)
    assert signed_chain("m", runs, key, head).intact

    def problems(rows: list, recorded: Head | None = head) -> list[str]:
        trail = signed_chain("m", rows, key, recorded)
        assert trail.signed and trail.assurance.startswith("signed by the tracking server")
        return list(trail.problems)

    forged = dataclasses.replace(event, seq=4, who="admin", to_stage="production", action="promote")
    for other_key in (None, b"x" * 64):  # an unsigned link, or one signed with a key that is not the server's
        (problem,) = problems([*runs, (link(forged, prev_hash, other_key, prev_mac), False)])
        assert problem.startswith("event 4 (promote of version 3 to production, by 'admin') is not signed")
    edited = {**runs[1][0], AuditTag.EVENT: runs[1][0][AuditTag.EVENT].replace('"alice"', '"bob"')}
    assert problems([runs[0], (edited, False), runs[2]])[0].startswith(
        "event 2 (promote of version 2 to staging, by 'bob')"
    )
    assert problems([runs[0], runs[2]]) == ["event 2 of 'm' deleted (the server signed them)"]
    assert problems(runs[:2]) == [
        "event 3 of 'm' deleted: the tracking server signed 3 event(s), the trail holds 2"
    ]  # the last one: only the head the server kept tells
    assert problems([runs[0], (runs[1][0], True), runs[2]]) == [
        "event 2 was deleted in MLflow (kept here, marked unverified)"
    ]
    assert "has no record of the last event" in problems(runs, None)[0]


def test_on_a_server_the_policy_is_the_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17, reproduction 1 on the client's side: a caller's policy file does not apply to a tracking server."""
    mine = tmp_path / "mine.yml"
    mine.write_text("enforce: never\n")
    server = {"enforce": "auth_server", "stages": {"production": {"allowed_users": ["alice"]}}}
    with pytest.raises(RegistryError, match=r"--policy '.*mine.yml' applies to a local registry only"):
        policy_for("http://registry:5000", server, mine)
    monkeypatch.setenv("ADAPTER_REGISTRY_POLICY", str(mine))
    said: list[str] = []
    assert policy_for("https://registry", server, warn=said.append).refusal("production", "bob", True)
    assert said == ["ADAPTER_REGISTRY_POLICY is ignored on a tracking server: the policy is the server's"]
    monkeypatch.chdir(tmp_path)  # no conf/base/promotion_policy.yml: the strict default
    assert policy_for("http://registry:5000", None, warn=said.append).refusal("production", "admin", True)
    assert "checked by this client only" in said[-1]
    assert (
        policy_for(f"sqlite:///{tmp_path}/mlflow.db", None).enforce == "never"
    )  # a local store: the caller's
