"""Stages and gates: ``candidate → staging → production``, ``archived`` for replaced versions, and rollback.

A promotion checks the who-may-promote policy, the gates (each reported pass/fail) and the files (every one
downloaded and checked against its registered sha256, and a base fingerprint recorded), then moves the stage's
alias, archives the version it replaces and appends one event to the audit trail, all holding the adapter's
writer lock (``registry.locking``): concurrent promoters and rollbacks of one adapter take turns, each deciding on
what the one before it left, so the audit trail stays one chain and its last event says who holds the stage.
The moves are all or nothing: the step that needs the most rights (removing an alias: MANAGE under basic-auth)
goes first, and a step refused after earlier ones (HTTP 403, the server's promotion policy, the audit append)
undoes them, newest first; the error says what was undone and what could not be.
``--force`` skips failing gates (never the policy or the files), needs a reason and is audited as forced. A
promotion refused by the policy, a failing gate or the files is audited too (action ``refused``, with the gate
results). A request router's gates also ask that each of its pinned experts holds the stage at the pinned version
(``registry.routed``). Rollback replays the audit trail of the
stage to find the version that held it before.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from adapter_registry.checksums import files_digest
from adapter_registry.registry.audit import AuditLog, AuditTrail
from adapter_registry.registry.entities import (
    PROMOTION_STAGES,
    AdapterVersion,
    GateResult,
    RegistryError,
    StageChange,
    Tag,
)
from adapter_registry.registry.lineage import gates_of, must_beat_base
from adapter_registry.registry.policy import Actor, PromotionPolicy, policy_for
from adapter_registry.registry.routed import routing_gates
from adapter_registry.registry.stages import held_at
from adapter_registry.registry.store import AdapterStore, parse_ref


def actor_of(store: AdapterStore) -> Actor:
    """Who acts: the user a server running the auth app authenticated (its ``server`` answer, read once with its
    policy, says so), else ``Actor.of`` (MLflow's ``users/current``, or the OS user on a local registry)."""
    app = store.server_app()
    if app is not None and app.get("user"):
        return Actor(str(app["user"]), True)
    return Actor.of(store.tracking_uri)


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
    checked: Future[str | None] | None = None,
) -> None:
    """Refuse (audited; ``--force`` does not override it) a version whose files are not what was registered, or
    that records no base fingerprint: what a stage holds is what the server loads. ``checked``: ``_files_problem``
    of the version, started earlier."""
    problem = checked.result() if checked is not None else _files_problem(store, version)
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


def _files_problem(store: AdapterStore, version: AdapterVersion) -> str | None:
    """What is wrong with the version's files (each downloaded, its sha256 checked) or its base fingerprint."""
    if not version.base_fingerprint:
        return f"no base fingerprint recorded ({Tag.BASE_FINGERPRINT}): nothing says which base it was trained on"
    return store.files_problem(version)


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
    actor = actor or actor_of(store)
    policy = policy or policy_for(store.tracking_uri, (store.server_app() or {}).get("policy"))
    with store.writer_lock(name):
        return _promote(store, ref, to, reason, force, policy, actor)


def _promote(
    store: AdapterStore, ref: str, to: str, reason: str, force: bool, policy: PromotionPolicy, actor: Actor
) -> StageChange:
    name = parse_ref(ref)[0]
    audit = AuditLog(store)
    # The reads do not depend on one another: sent at once, a promotion waits for one round trip, not seven (the
    # files are downloaded and checked meanwhile too; a refusal before their check ignores the result).
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="promote-read") as reads:
        resolved = reads.submit(store.resolve, ref)
        held = {s: reads.submit(store.holder, name, s, True) for s in PROMOTION_STAGES}
        trail = reads.submit(audit.read, name)
        model = store.read_model(name, reads)  # for the summary rewritten when the lock is left
        version = resolved.result()
        files = reads.submit(_files_problem, store, version)
        holders = {s: f.result() for s, f in held.items()}
        model.result()
        return _decide_and_move(store, audit, version, holders, trail.result(), files, to, reason, force, policy,
                                actor)  # fmt: skip


def _decide_and_move(
    store: AdapterStore, audit: AuditLog, version: AdapterVersion, holders: dict[str, AdapterVersion | None],
    trail: AuditTrail, files: Future[str | None], to: str, reason: str, force: bool, policy: PromotionPolicy,
    actor: Actor,
) -> StageChange:  # fmt: skip
    checks = audit.stage_checks(version.name, trail=trail, holders=holders)
    if version.stage == to and checks[to].ok:
        raise RegistryError("INVALID_STATE", f"{version.ref} already holds stage {to!r}")
    # (a holder whose alias was moved outside adapter-registry may be promoted where it stands: gated, audited)
    _check_policy(audit, policy, actor, version, to, reason, "promotion")
    serving = holders[to]
    staged = (
        version.stage == "staging" and checks["staging"].ok and checks["staging"].holder == version.version
    )
    gates = evaluate_gates(version, to, serving, staged=staged) + routing_gates(store, version, to)
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
    _check_files(store, audit, actor, version, to, reason, "promotion", files)

    # it holds its old stage's alias (not a bare candidate) and leaves it
    left_alias = version.stage in version.aliases and version.stage != to
    replaced = serving if serving is not None and serving.version != version.version else None
    event = StageChange(
        model=version.name, version=version.version, from_stage=version.stage, to_stage=to, who=actor.user,
        when=dt.datetime.now(dt.UTC), reason=reason, forced=bool(failed) and force, action="promote",
        gates=tuple(gates), replaced_version=replaced.version if replaced else None,
        digest=files_digest(version.checksums),
    )  # fmt: skip
    name, moves = version.name, _Moves(f"promotion of {version.ref} to {to}")
    with moves:
        if left_alias:  # first: removing an alias needs the most rights (MANAGE under basic-auth)
            moves.do(f"alias {version.stage!r} removed from version {version.version}",
                     lambda: store.drop_alias(name, version.stage),
                     lambda: store.set_stage(name, version.version, version.stage))  # fmt: skip
        moves.do(f"{to} given to version {version.version}",
                 lambda: store.set_stage(name, version.version, to, current=version),
                 lambda: _give_back(store, version, to, serving))  # fmt: skip
        if replaced is not None:
            moves.do(f"version {replaced.version} archived",
                     lambda: store.set_stage(name, replaced.version, "archived", current=replaced),
                     lambda: store.set_stage(name, replaced.version, to))  # fmt: skip
        return audit.append(event)  # a stage change the trail does not hold is undone


def _give_back(
    store: AdapterStore, version: AdapterVersion, stage: str, holder: AdapterVersion | None
) -> None:
    """Undo giving ``stage`` to ``version``: back to its ``holder`` before (or to nobody), and ``version`` archived
    again if it was."""
    if holder is not None and holder.version != version.version:
        store.set_stage(version.name, holder.version, stage)
    elif holder is None:
        store.drop_alias(version.name, stage)
    if version.stage == "archived":
        store.set_stage(version.name, version.version, "archived")


class _Moves:
    """The steps of one stage change, each with its undo. Inside ``with``, a RegistryError undoes the steps done
    so far, newest first, and is raised again with what was undone (or could not be) added to its message."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.done: list[tuple[str, Callable[[], None]]] = []

    def do(self, what: str, step: Callable[[], None], undo: Callable[[], None]) -> None:
        step()
        self.done.append((what, undo))

    def __enter__(self) -> _Moves:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if not isinstance(exc, RegistryError):
            return
        if not self.done:
            raise RegistryError(exc.code, f"{exc.message} (nothing was moved)") from exc
        undone, stuck = [], []
        for what, undo in reversed(self.done):
            try:
                undo()
                undone.append(what)
            except RegistryError as failed:
                stuck.append(f"{what} ({failed.message})")
        report = f"undone: {'; '.join(undone)}" if undone else ""
        if stuck:
            report += ("; " if report else "") + (
                f"NOT undone: {'; '.join(stuck)}: audit and list report the holder UNATTESTED and serve keeps the "
                "last attested version; an administrator puts the alias back"
            )
        raise RegistryError(exc.code, f"{exc.message} ({self.what} {report})") from exc


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
    actor = actor or actor_of(store)
    policy = policy or policy_for(store.tracking_uri, (store.server_app() or {}).get("policy"))
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
    moves = _Moves(f"rollback of {name}@{stage} to version {target.version}")
    with moves:
        moves.do(f"{stage} given to version {target.version}",
                 lambda: store.set_stage(name, target.version, stage, current=target),
                 lambda: _give_back(store, target, stage, current))  # fmt: skip
        if replaced is not None:
            moves.do(f"version {replaced.version} archived",
                     lambda: store.set_stage(name, replaced.version, "archived", current=replaced),
                     lambda: store.set_stage(name, replaced.version, stage))  # fmt: skip
        return audit.append(event)  # a stage change the trail does not hold is undone


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
    actor = actor or actor_of(store)
    policy = policy or policy_for(store.tracking_uri, (store.server_app() or {}).get("policy"))
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
    moves = _Moves(f"retirement of {name}@{stage}")
    with moves:
        if holder is not None:
            moves.do(f"alias {stage!r} removed from version {current.version}",
                     lambda: store.drop_alias(name, stage),
                     lambda: store.set_stage(name, current.version, stage))  # fmt: skip
        moves.do(f"version {current.version} archived",
                 lambda: store.set_stage(name, current.version, "archived"),
                 lambda: store.set_stage(name, current.version, stage) if holder is not None else None)  # fmt: skip
        return audit.append(event)
