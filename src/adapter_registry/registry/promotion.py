"""Stages and gates: ``candidate → staging → production``, ``archived`` for replaced versions, and rollback.

A promotion checks the who-may-promote policy, the gates (each reported pass/fail) and the files (every one
downloaded and checked against its registered sha256, and a base fingerprint recorded), then moves the stage's
alias, archives the version it replaces and appends one event to the audit trail, all holding the adapter's
writer lock (``registry.locking``): concurrent promoters and rollbacks of one adapter take turns, each deciding on
what the one before it left, so the audit trail stays one chain and its last event says who holds the stage.
``--force`` skips failing gates (never the policy or the files), needs a reason and is audited as forced. A
promotion refused by the policy, a failing gate or the files is audited too (action ``refused``, with the gate
results). Rollback replays the audit trail of the
stage to find the version that held it before.
"""

from __future__ import annotations

import contextlib
import datetime as dt

from adapter_registry.checksums import files_digest
from adapter_registry.registry.audit import AuditLog
from adapter_registry.registry.entities import (
    PROMOTION_STAGES,
    AdapterVersion,
    GateResult,
    RegistryError,
    StageChange,
    Tag,
)
from adapter_registry.registry.lineage import gates_of, must_beat_base
from adapter_registry.registry.policy import Actor, PromotionPolicy, load_policy
from adapter_registry.registry.stages import held_at
from adapter_registry.registry.store import AdapterStore, parse_ref


def evaluate_gates(
    version: AdapterVersion,
    to: str,
    serving: AdapterVersion | None,
    rollback: bool = False,
    staged: bool | None = None,
) -> list[GateResult]:
    """Every gate of moving ``version`` into stage ``to`` whose current holder is ``serving`` (a ``rollback``
    restores a version that held the stage, so it need not come from staging). ``staged``: whether the version
    holds staging by an audited promotion (None: whether it holds the staging alias at all)."""
    results = []
    for text, gate in gates_of(version):
        if isinstance(gate, ValueError):
            results.append(GateResult(text, False, str(gate)))
            continue
        value = version.metrics.get(gate.metric)
        if value is None:
            recorded = ", ".join(sorted(version.metrics)) or "none"
            results.append(
                GateResult(str(gate), False, f"metric {gate.metric!r} not recorded (recorded: {recorded})")
            )
        else:
            results.append(GateResult(str(gate), gate.passes(value), f"{gate.metric} = {value:g}"))
    if must_beat_base(version):
        beats = version.metrics.get("beats_base")
        detail = (
            "beats_base not recorded" if beats is None else f"beats_base = {beats:g} (bootstrap interval)"
        )
        results.append(GateResult("beats the base model", beats == 1.0, detail))
    if serving is None or serving.version == version.version:
        results.append(GateResult(f"serves the {to} base", True, f"no other version serves {to} yet"))
    else:
        same = serving.base_fingerprint == version.base_fingerprint and bool(version.base_fingerprint)
        detail = (
            f"{to} serves base {serving.base_id or '?'} ({serving.base_fingerprint[:12] or 'no fingerprint'}); "
            f"this adapter was trained on {version.base_id or '?'} ({version.base_fingerprint[:12] or 'no fingerprint'})"
        )
        results.append(GateResult(f"serves the {to} base", same, detail))
    if to == "production" and not rollback:
        detail = f"current stage: {version.stage}"
        if version.stage == "staging" and staged is False:
            detail += " (its staging alias was set outside adapter-registry: promote it to staging first)"
        passed = version.stage == "staging" and staged is not False
        results.append(GateResult("production only from staging", passed, detail))
    return results


def _check_policy(
    audit: AuditLog,
    policy: PromotionPolicy,
    actor: Actor,
    version: AdapterVersion,
    to: str,
    reason: str,
    action: str,
) -> None:
    refusal = policy.refusal(to, actor.user, actor.authenticated)
    if refusal is None:
        return
    audit.append(
        StageChange(
            model=version.name,
            version=version.version,
            from_stage=version.stage,
            to_stage=to,
            who=actor.user,
            when=dt.datetime.now(dt.UTC),
            reason=f"{refusal}; asked: {reason}" if reason else refusal,
            action="refused",
        )
    )
    raise RegistryError("PERMISSION_DENIED", f"{action} of {version.ref} to {to} refused: {refusal}")


def _check_files(
    store: AdapterStore,
    audit: AuditLog,
    actor: Actor,
    version: AdapterVersion,
    to: str,
    reason: str,
    action: str,
) -> None:
    """Refuse (audited; ``--force`` does not override it) a version whose files are not what was registered, or
    that records no base fingerprint: what a stage holds is what the server loads."""
    problem: str | None
    if not version.base_fingerprint:
        problem = f"no base fingerprint recorded ({Tag.BASE_FINGERPRINT}): nothing says which base it was trained on"
    else:
        problem = store.files_problem(version)
    if problem is None:
        return
    audit.append(
        StageChange(
            model=version.name, version=version.version, from_stage=version.stage, to_stage=to, who=actor.user,
            when=dt.datetime.now(dt.UTC), reason=f"files: {problem}" + (f"; asked: {reason}" if reason else ""),
            action="refused",
        )
    )  # fmt: skip
    code = "INVALID_STATE" if not version.base_fingerprint else "CORRUPTED"
    raise RegistryError(code, f"{action} of {version.ref} to {to} refused: {problem}")


def promote(
    store: AdapterStore,
    ref: str,
    to: str,
    *,
    reason: str = "",
    force: bool = False,
    policy: PromotionPolicy | None = None,
    actor: Actor | None = None,
) -> StageChange:
    """Move ``ref`` (NAME/VERSION or NAME@STAGE) into stage ``to``; returns the audited event."""
    if to not in PROMOTION_STAGES:
        raise RegistryError(
            "INVALID_INPUT", f"cannot promote to {to!r}; promote to one of {', '.join(PROMOTION_STAGES)}"
        )
    if force and not reason.strip():
        raise RegistryError("INVALID_INPUT", "--force needs --reason: say why the gates are overridden")
    name, _, _ = parse_ref(ref)
    actor = actor or Actor.of(store.tracking_uri)
    policy = policy or load_policy()
    with store.writer_lock(name):
        return _promote(store, ref, to, reason, force, policy, actor)


def _promote(
    store: AdapterStore, ref: str, to: str, reason: str, force: bool, policy: PromotionPolicy, actor: Actor
) -> StageChange:
    version = store.resolve(ref)
    audit = AuditLog(store)
    checks = audit.stage_checks(version.name)
    if version.stage == to and checks[to].ok:
        raise RegistryError("INVALID_STATE", f"{version.ref} already holds stage {to!r}")
    # (a holder whose alias was moved outside adapter-registry may be promoted where it stands: gated, audited)
    _check_policy(audit, policy, actor, version, to, reason, "promotion")
    serving = store.holder(version.name, to, known_model=True)
    staged = (
        version.stage == "staging" and checks["staging"].ok and checks["staging"].holder == version.version
    )
    gates = evaluate_gates(version, to, serving, staged=staged)
    failed = [g for g in gates if not g.passed]
    if failed and not force:
        listing = "; ".join(f"{g.gate}: {g.detail}" for g in failed)
        audit.append(
            StageChange(
                model=version.name, version=version.version, from_stage=version.stage, to_stage=to,
                who=actor.user, when=dt.datetime.now(dt.UTC),
                reason=f"gates failed: {listing}" + (f"; asked: {reason}" if reason else ""),
                action="refused", gates=tuple(gates),
            )
        )  # fmt: skip
        raise RegistryError("GATE_FAILED", f"promotion of {version.ref} to {to} refused: {listing}")
    _check_files(store, audit, actor, version, to, reason, "promotion")

    # it holds its old stage's alias (not a bare candidate) and leaves it
    left_alias = version.stage in version.aliases and version.stage != to
    event = StageChange(
        model=version.name, version=version.version, from_stage=version.stage, to_stage=to, who=actor.user,
        when=dt.datetime.now(dt.UTC), reason=reason, forced=bool(failed) and force, action="promote",
        gates=tuple(gates), replaced_version=serving.version if serving and serving.version != version.version else None,
        digest=files_digest(version.checksums),
    )  # fmt: skip
    try:
        store.set_stage(version.name, version.version, to, current=version)
        if left_alias:
            store.drop_alias(version.name, version.stage)  # it left its old stage
        if serving is not None and serving.version != version.version:
            store.set_stage(version.name, serving.version, "archived", current=serving)
        return audit.append(event)  # a stage change the trail does not hold is undone
    except RegistryError:
        _restore(store, version, to, serving, left_alias)
        raise


def _restore(
    store: AdapterStore, version: AdapterVersion, to: str, serving: AdapterVersion | None, left_alias: bool
) -> None:
    """Best-effort undo of a half-done move, so a refused step (e.g. HTTP 403) leaves the stages as they were."""
    name = version.name
    steps = [
        (lambda: store.set_stage(name, serving.version, to))
        if serving is not None
        else (lambda: store.drop_alias(name, to))
    ]
    if left_alias:
        steps.append(lambda: store.set_stage(name, version.version, version.stage))
    if version.stage == "archived":
        steps.append(lambda: store.set_stage(name, version.version, "archived"))
    for step in steps:
        with contextlib.suppress(RegistryError):
            step()


def stage_history(events: tuple[StageChange, ...] | list[StageChange], stage: str) -> list[int]:
    """Versions that held ``stage`` in order, as the audit trail tells it (rollbacks pop the top)."""
    stack: list[int] = []
    for event in events:
        if event.to_stage != stage or event.action not in ("promote", "rollback") or not event.verified:
            continue
        if event.action == "promote":
            if not stack and event.replaced_version is not None:
                stack.append(event.replaced_version)
            stack.append(event.version)
        elif stack:
            stack.pop()
            if not stack or stack[-1] != event.version:
                stack.append(event.version)
    return stack


def rollback(
    store: AdapterStore,
    name: str,
    stage: str = "production",
    *,
    reason: str = "",
    to_time: dt.datetime | None = None,
    force: bool = False,
    policy: PromotionPolicy | None = None,
    actor: Actor | None = None,
) -> StageChange:
    """Give ``stage`` back to the version that held it before the current one (or, with ``to_time``, to the
    version the audit trail says held it then); the current one is archived.

    Gated like a promotion (the version's gates, its base against the stage's), except that it need not come from
    staging; ``force`` overrides failing gates with a reason, audited. A refusal is audited too.
    """
    if stage not in PROMOTION_STAGES:
        raise RegistryError(
            "INVALID_INPUT", f"cannot roll back stage {stage!r}; use one of {', '.join(PROMOTION_STAGES)}"
        )
    if force and not reason.strip():
        raise RegistryError("INVALID_INPUT", "--force needs --reason: say why the gates are overridden")
    actor = actor or Actor.of(store.tracking_uri)
    policy = policy or load_policy()
    with store.writer_lock(name):
        return _rollback(store, name, stage, reason, to_time, force, policy, actor)


def _rollback(
    store: AdapterStore, name: str, stage: str, reason: str, to_time: dt.datetime | None, force: bool,
    policy: PromotionPolicy, actor: Actor,
) -> StageChange:  # fmt: skip
    current = store.holder(name, stage)  # also checks that the adapter exists
    audit = AuditLog(store)
    events = audit.read(name).events
    if to_time is None:
        target_version = _previous_holder(name, stage, current, events)
    else:
        placed = held_at(events, to_time).get(stage)
        when = to_time.isoformat(timespec="seconds")
        if placed is None:
            raise RegistryError(
                "INVALID_STATE",
                f"rollback of {name}@{stage}: no version held {stage} at {when} (audit trail)",
            )
        if current is not None and placed.version == current.version and audit.stage_checks(name)[stage].ok:
            raise RegistryError(
                "INVALID_STATE", f"rollback of {name}@{stage}: version {current.version} held it at {when} "
                "and holds it now",
            )  # fmt: skip
        target_version = placed.version
        reason = f"back to the holder at {when}" + (f"; {reason}" if reason else "")
    target = store.get_version(name, target_version)
    _check_policy(audit, policy, actor, target, stage, reason, "rollback")
    gates = evaluate_gates(target, stage, current, rollback=True)
    failed = [g for g in gates if not g.passed]
    if failed and not force:
        listing = "; ".join(f"{g.gate}: {g.detail}" for g in failed)
        audit.append(
            StageChange(
                model=name, version=target.version, from_stage=target.stage, to_stage=stage, who=actor.user,
                when=dt.datetime.now(dt.UTC), reason=f"gates failed: {listing}" + (f"; asked: {reason}" if reason else ""),
                action="refused", gates=tuple(gates),
            )
        )  # fmt: skip
        raise RegistryError("GATE_FAILED", f"rollback of {name}@{stage} to {target.ref} refused: {listing}")
    _check_files(store, audit, actor, target, stage, reason, "rollback")
    replaced = current if current is not None and current.version != target.version else None
    event = StageChange(
        model=name, version=target.version, from_stage=target.stage, to_stage=stage, who=actor.user,
        when=dt.datetime.now(dt.UTC), reason=reason, forced=bool(failed) and force, action="rollback",
        gates=tuple(gates), replaced_version=replaced.version if replaced is not None else None,
        digest=files_digest(target.checksums),
    )  # fmt: skip
    try:
        store.set_stage(name, target.version, stage, current=target)
        if replaced is not None:
            store.set_stage(name, replaced.version, "archived", current=replaced)
        return audit.append(event)  # a stage change the trail does not hold is undone
    except RegistryError:
        _restore(store, target, stage, current, left_alias=False)
        raise


def _previous_holder(
    name: str, stage: str, current: AdapterVersion | None, events: tuple[StageChange, ...]
) -> int:
    history = stage_history(events, stage)
    if current is None:
        raise RegistryError("INVALID_STATE", f"rollback of {name}@{stage}: no version holds {stage}")
    if len(history) < 2:
        raise RegistryError(
            "INVALID_STATE", f"rollback of {name}@{stage}: no earlier version in the audit history"
        )
    if history[-1] != current.version:
        raise RegistryError(
            "INVALID_STATE",
            f"rollback of {name}@{stage}: the alias points at version {current.version} but the audit trail says "
            f"{history[-1]} (moved outside adapter-registry); use --to-time, or promote explicitly",
        )
    return history[-2]


def retire(
    store: AdapterStore,
    name: str,
    stage: str = "production",
    *,
    reason: str = "",
    policy: PromotionPolicy | None = None,
    actor: Actor | None = None,
) -> StageChange:
    """Take ``stage`` away from its holder (the version is archived, nothing holds the stage): audited, so that
    ``serve`` stops serving it and the trail says who did it and why."""
    if stage not in PROMOTION_STAGES:
        raise RegistryError(
            "INVALID_INPUT", f"cannot retire stage {stage!r}; use one of {', '.join(PROMOTION_STAGES)}"
        )
    if not reason.strip():
        raise RegistryError("INVALID_INPUT", "retire needs --reason: say why the stage is emptied")
    actor = actor or Actor.of(store.tracking_uri)
    policy = policy or load_policy()
    with store.writer_lock(name):
        return _retire(store, name, stage, reason, policy, actor)


def _retire(
    store: AdapterStore, name: str, stage: str, reason: str, policy: PromotionPolicy, actor: Actor
) -> StageChange:
    audit = AuditLog(store)
    holder = store.holder(name, stage)
    current = holder
    # the alias may have been deleted outside adapter-registry: then retire what the trail placed
    if current is None:
        attested = audit.stage_checks(name)[stage].attested
        if attested is None:
            raise RegistryError("INVALID_STATE", f"retire {name}@{stage}: no version holds {stage}")
        current = store.get_version(name, attested)
    _check_policy(audit, policy, actor, current, stage, reason, "retirement")
    event = StageChange(
        model=name, version=current.version, from_stage=stage, to_stage="archived", who=actor.user,
        when=dt.datetime.now(dt.UTC), reason=reason, action="retire", digest=files_digest(current.checksums),
    )  # fmt: skip
    try:
        if holder is not None:
            store.drop_alias(name, stage)
        store.set_stage(name, current.version, "archived")
        return audit.append(event)
    except RegistryError:
        if holder is not None:
            with contextlib.suppress(RegistryError):
                store.set_stage(name, current.version, stage)
        raise
