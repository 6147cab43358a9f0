"""The replay of the audit trail into who holds each stage (registry/stages.py), on hand-made events: pure, fast."""

from __future__ import annotations

import datetime as dt

from adapter_registry.registry.entities import GateResult, StageChange
from adapter_registry.registry.stages import check_stages, held_at, replay

T0 = dt.datetime(2026, 11, 30, 10, 0, tzinfo=dt.UTC)
PASS, FAIL = (GateResult("exact_match >= 0.8", True, ""),), (GateResult("exact_match >= 0.8", False, ""),)


def event(seq: int, action: str, version: int, from_stage: str, to_stage: str, **kw: object) -> StageChange:
    return StageChange(model="m", version=version, from_stage=from_stage, to_stage=to_stage, who="alice",
                       when=T0 + dt.timedelta(minutes=seq), action=action, seq=seq,
                       gates=kw.pop("gates", PASS), **kw)  # type: ignore[arg-type]  # fmt: skip


def placed(events: list[StageChange], **kw: object) -> dict[str, int]:
    return {stage: p.version for stage, p in replay(events, **kw).items()}  # type: ignore[arg-type]


def test_promotions_move_a_version_and_rollbacks_give_the_stage_back() -> None:
    events = [
        event(1, "promote", 1, "candidate", "staging"),
        event(2, "promote", 1, "staging", "production"),  # leaves staging empty
        event(3, "promote", 2, "candidate", "staging"),
        event(4, "promote", 2, "staging", "production", replaced_version=1),
        event(5, "rollback", 1, "archived", "production", replaced_version=2),
    ]
    assert placed(events[:2]) == {"production": 1}
    assert placed(events[:4]) == {"production": 2}
    assert placed(events) == {"production": 1}
    assert placed(events, until=T0 + dt.timedelta(minutes=3, seconds=30)) == {"production": 1, "staging": 2}
    assert held_at(events, T0 - dt.timedelta(seconds=1)) == {}  # before any event


def test_refused_unverified_and_ungated_events_place_nothing() -> None:
    events = [
        event(1, "promote", 1, "candidate", "staging"),
        event(2, "refused", 2, "candidate", "staging", gates=FAIL),
        event(3, "promote", 3, "candidate", "staging", verified=False),  # the chain breaks here
        event(4, "promote", 4, "candidate", "staging", gates=FAIL),  # gates failed, not forced: a forgery
        event(
            5, "promote", 5, "candidate", "staging", gates=FAIL, forced=True, reason=""
        ),  # forced, no reason
    ]
    assert placed(events) == {"staging": 1}
    forced = event(6, "promote", 6, "candidate", "staging", gates=FAIL, forced=True, reason="incident 9")
    assert placed([*events, forced]) == {"staging": 6}


def test_a_retirement_empties_the_stage_of_its_holder_only() -> None:
    events = [
        event(1, "promote", 1, "candidate", "production"),
        event(2, "retire", 2, "production", "archived"),
    ]
    assert placed(events) == {"production": 1}  # it retired a version that did not hold the stage
    assert placed([*events, event(3, "retire", 1, "production", "archived")]) == {}


def test_checks_name_moved_deleted_and_edited_holders() -> None:
    events = [event(1, "promote", 1, "candidate", "production", digest="sha256:" + "a" * 64)]
    ok = check_stages("m", {"production": 1}, events, ("production",))["production"]
    assert ok.ok and ok.problem is None
    moved = check_stages("m", {"production": 2}, events, ("production",))["production"]
    assert not moved.ok and "held by version 2, which no audited" in (moved.problem or "")
    deleted = check_stages("m", {"production": None}, events, ("production",))["production"]
    assert not deleted.ok and "held by nobody" in (deleted.problem or "")
    edited = check_stages(
        "m", {"production": 1}, events, ("production",), {"production": "sha256:" + "b" * 64}
    )
    assert not edited["production"].ok and "files of version 1 changed" in (
        edited["production"].problem or ""
    )
    same = check_stages("m", {"production": 1}, events, ("production",), {"production": "sha256:" + "a" * 64})
    assert same["production"].ok
    empty = check_stages("m", {"staging": None}, events, ("staging",))["staging"]
    assert empty.ok  # nothing placed there, nothing holds it
