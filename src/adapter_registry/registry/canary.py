"""A canary: a version taking a share of one adapter's production traffic, started, promoted or rolled back
through the registry, every step audited with its settings or figures.

Recorded where every replica and the CLI see it: the ``canary`` alias on the candidate (MLflow's UI shows it) and
the audit trail's ``canary_start`` event, which holds the settings (percent, shadow, the production version it is
compared with, the canary policy it is decided by) and attests the alias: a replica serves the alias holder beside
production only while the verified trail's running canary is that version, with the files the start recorded
(``registry.stages.open_canary``). The settings are not copied into a registered-model tag: a copy outside the hash
chain, which anyone with EDIT on the model could change, would be a second truth to reconcile.

Starting a canary is gated exactly like a promotion to production (the who-may-promote policy, the version's
gates, "production only from staging", the base production serves, the files checked against their sha256), and
is refused, audited, while another canary of the adapter runs. The event is written before the alias: a replica
that reads the event first waits for the alias (and never serves a version the trail does not name); an alias that
cannot be set is followed by an audited ``canary_stop``.

Ending it: ``promote`` runs a normal audited promotion of the candidate to production (its gates, policy and
files checked again), then closes the canary with a ``canary_promote`` event carrying the decision's figures;
``rollback`` (the policy's verdict) and ``stop`` (an operator) close it with ``canary_rollback``/``canary_stop``
first, so replicas stop routing to it at their next poll even if the alias cannot be removed. Who may promote to
production is checked for a start and a promotion; stopping a canary only takes traffic away from a candidate, so
anyone who may write the audit trail may do it (audited, with their name). Starting and ending hold the adapter's
writer lock (``registry.locking``), as promotions do: two operators racing see one another's canary.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from adapter_registry.checksums import files_digest
from adapter_registry.registry.audit import AuditLog
from adapter_registry.registry.entities import CANARY_ALIAS, RegistryError, StageChange
from adapter_registry.registry.policy import Actor, PromotionPolicy, load_policy
from adapter_registry.registry.promotion import _check_files, _check_policy, evaluate_gates, promote
from adapter_registry.registry.stages import CANARY_START, CanaryCheck, check_canary, open_canary
from adapter_registry.registry.store import AdapterStore, parse_ref

__all__ = ["Canary", "canary_state", "end_canary", "start_canary"]

KEY_ORDER = "X-Canary-Key header or the request's user field, else the tenant, else the request id"


@dataclass(frozen=True)
class Canary:
    """A running canary, as its audited start recorded it."""

    model: str
    version: int  # the candidate
    percent: int  # share of the adapter's production traffic it answers (shadow: mirrors)
    shadow: bool  # production answers every request; the candidate runs on a copy of its share
    baseline: int  # the production version when it started
    policy: dict[str, Any]  # the canary policy it is decided by (canary.CanaryPolicy)
    seq: int  # its start event: the canary's id
    started: dt.datetime
    who: str
    digest: str  # files_digest of the candidate's files when it started

    @classmethod
    def from_event(cls, event: StageChange) -> Canary:
        d = event.details
        return cls(
            model=event.model, version=event.version, percent=int(d.get("percent", 0)),
            shadow=bool(d.get("shadow", False)), baseline=int(d.get("baseline", 0)), policy=dict(d.get("policy") or {}),
            seq=event.seq, started=event.when, who=event.who, digest=event.digest,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "percent": self.percent, "shadow": self.shadow,
            "baseline": self.baseline, "policy": self.policy, "seq": self.seq, "started": self.started.isoformat(),
            "who": self.who,
        }  # fmt: skip


def canary_state(store: AdapterStore, name: str) -> tuple[Canary | None, CanaryCheck]:
    """The canary running for ``name`` (None: none), and the check of its alias against the trail."""
    events = AuditLog(store).read(name).events
    holder = store.holder(name, CANARY_ALIAS)
    check = check_canary(
        name, holder.version if holder else None, events, files_digest(holder.checksums) if holder else ""
    )
    return (Canary.from_event(check.start) if check.start is not None else None), check


def start_canary(
    store: AdapterStore,
    ref: str,
    percent: int,
    *,
    canary_policy: dict[str, Any],
    shadow: bool = False,
    reason: str = "",
    force: bool = False,
    policy: PromotionPolicy | None = None,
    actor: Actor | None = None,
) -> StageChange:
    """Start a canary of ``ref`` taking ``percent`` of its adapter's production traffic (``shadow``: mirrored
    only), decided by ``canary_policy`` (``canary.CanaryPolicy`` as a dict); returns the audited start event."""
    if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 99:
        raise RegistryError(
            "INVALID_INPUT", f"--canary {percent!r} is outside 1-99: give the share of production traffic the "
            "candidate takes, e.g. --canary 10 (promote without --canary to give it all)",
        )  # fmt: skip
    if force and not reason.strip():
        raise RegistryError("INVALID_INPUT", "--force needs --reason: say why the gates are overridden")
    actor = actor or Actor.of(store.tracking_uri)
    with store.writer_lock(parse_ref(ref)[0]):
        return _start(store, ref, percent, canary_policy, shadow, reason, force, policy, actor)


def _start(
    store: AdapterStore, ref: str, percent: int, canary_policy: dict[str, Any], shadow: bool, reason: str,
    force: bool, policy: PromotionPolicy | None, actor: Actor,
) -> StageChange:  # fmt: skip
    version = store.resolve(ref)
    name = version.name
    audit = AuditLog(store)
    trail = audit.read(name)
    running = open_canary(trail.events)
    if running is not None:
        why = (
            f"a canary of {name} is running: version {running.version} at "
            f"{running.details.get('percent', '?')}% since {running.when:%Y-%m-%d %H:%M:%S} UTC (event {running.seq})"
        )
        _refuse(audit, version, actor, why, reason)
        raise RegistryError(
            "INVALID_STATE", f"canary of {version.ref} refused: {why}; wait for its decision (adapter-registry "
            f"canary watch {name}) or end it (adapter-registry canary stop {name} --reason ...)",
        )  # fmt: skip
    production = audit.stage_checks(name, trail)["production"]
    if production.holder is None or not production.ok:
        problem = production.problem or f"no version of {name} holds production"
        raise RegistryError(
            "INVALID_STATE", f"canary of {version.ref} refused: a canary is compared with the attested production "
            f"version, and {problem}. Fix: promote a version to production first (without --canary)",
        )  # fmt: skip
    if production.holder == version.version:
        raise RegistryError("INVALID_STATE", f"{version.ref} holds production already: nothing to canary")
    _check_policy(audit, policy or load_policy(), actor, version, "production", reason, "canary")
    serving = store.get_version(name, production.holder)
    staging = audit.stage_checks(name, trail)["staging"]
    staged = version.stage == "staging" and staging.ok and staging.holder == version.version
    gates = evaluate_gates(version, "production", serving, staged=staged)
    failed = [g for g in gates if not g.passed]
    if failed and not force:
        listing = "; ".join(f"{g.gate}: {g.detail}" for g in failed)
        _refuse(audit, version, actor, f"gates failed: {listing}", reason, tuple(gates))
        raise RegistryError("GATE_FAILED", f"canary of {version.ref} refused: {listing}")
    _check_files(store, audit, actor, version, "production", reason, "canary")
    details = {
        "percent": percent, "shadow": shadow, "baseline": serving.version,
        "baseline_digest": files_digest(serving.checksums), "policy": canary_policy, "key": KEY_ORDER,
    }  # fmt: skip
    started = audit.append(
        StageChange(
            model=name, version=version.version, from_stage=version.stage, to_stage="canary", who=actor.user,
            when=dt.datetime.now(dt.UTC), reason=reason, forced=bool(failed) and force, action=CANARY_START,
            gates=tuple(gates), replaced_version=None, digest=files_digest(version.checksums), details=details,
        )
    )  # fmt: skip
    try:
        store.set_alias(name, CANARY_ALIAS, version.version)
    except RegistryError as exc:
        with contextlib.suppress(RegistryError):
            _close(
                audit, started, "canary_stop", actor, f"the canary alias could not be set: {exc.message}", {}
            )
        raise
    return started


def end_canary(
    store: AdapterStore,
    name: str,
    outcome: Literal["promote", "rollback", "stop"],
    *,
    reason: str,
    details: dict[str, Any] | None = None,
    seq: int | None = None,
    policy: PromotionPolicy | None = None,
    actor: Actor | None = None,
) -> list[StageChange]:
    """Close the running canary of ``name``: ``promote`` its candidate to production (an audited promotion), or
    ``rollback``/``stop`` it; ``details`` (the figures and the verdict) go into the closing event. ``seq``: the
    canary the caller decided on (refused if another one runs now). Returns the events written."""
    if outcome not in ("promote", "rollback", "stop"):
        raise RegistryError("INVALID_INPUT", f"a canary ends by promote, rollback or stop, not {outcome!r}")
    if outcome == "stop" and not reason.strip():
        raise RegistryError("INVALID_INPUT", "canary stop needs --reason: say why the canary is ended")
    if not store.model_exists(name):
        raise RegistryError("NOT_FOUND", f"adapter {name!r} is not registered")
    actor = actor or Actor.of(store.tracking_uri)
    with store.writer_lock(name):
        return _end(store, name, outcome, reason, details, seq, policy, actor)


def _end(
    store: AdapterStore, name: str, outcome: str, reason: str, details: dict[str, Any] | None, seq: int | None,
    policy: PromotionPolicy | None, actor: Actor,
) -> list[StageChange]:  # fmt: skip
    audit = AuditLog(store)
    running = open_canary(audit.read(name).events)
    if running is None:
        raise RegistryError("INVALID_STATE", f"no canary of {name} is running")
    if seq is not None and running.seq != seq:
        raise RegistryError(
            "INVALID_STATE",
            f"the canary decided on (event {seq}) is over; canary event {running.seq} runs now",
        )
    actor = actor or Actor.of(store.tracking_uri)
    written: list[StageChange] = []
    details = {"canary": running.seq, "decision": outcome, **(details or {})}
    if outcome == "promote":
        holder = store.holder(name, "production")
        if holder is None or holder.version != running.version:  # (already there: a decider stopped half-way)
            written.append(
                promote(
                    store, f"{name}/{running.version}", "production", policy=policy, actor=actor,
                    reason=f"canary (event {running.seq}) passed: {reason}",
                )
            )  # fmt: skip
        details["promotion"] = written[0].seq if written else None
    action = {"promote": "canary_promote", "rollback": "canary_rollback", "stop": "canary_stop"}[outcome]
    written.append(_close(audit, running, action, actor, reason, details))
    try:
        store.drop_alias(name, CANARY_ALIAS)
    except RegistryError as exc:
        if store.holder(name, CANARY_ALIAS) is not None:
            raise RegistryError(
                exc.code, f"the canary of {name} is closed (event {written[-1].seq}; replicas stop routing to it) "
                f"but its alias could not be removed: {exc.message}. Fix: remove the 'canary' alias in MLflow",
            ) from None  # fmt: skip
    return written


def _close(
    audit: AuditLog, start: StageChange, action: str, actor: Actor, reason: str, details: dict[str, Any]
) -> StageChange:
    version = audit.store.get_version(start.model, start.version)
    return audit.append(
        StageChange(
            model=start.model, version=start.version, from_stage="canary", to_stage=version.stage, who=actor.user,
            when=dt.datetime.now(dt.UTC), reason=reason, action=action, digest=start.digest, details=details,
        )
    )  # fmt: skip


def _refuse(
    audit: AuditLog, version: Any, actor: Actor, why: str, reason: str, gates: tuple[Any, ...] = ()
) -> None:
    audit.append(
        StageChange(
            model=version.name, version=version.version, from_stage=version.stage, to_stage="canary",
            who=actor.user, when=dt.datetime.now(dt.UTC), reason=why + (f"; asked: {reason}" if reason else ""),
            action="refused", gates=gates,
        )
    )  # fmt: skip
