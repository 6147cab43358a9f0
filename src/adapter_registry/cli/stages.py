"""Stages moved and their history: ``promote`` (or start a canary), ``rollback``, ``retire`` (gated and audited),
``audit`` (the trail checked) and ``history`` (who held each stage, and when)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from adapter_registry.cli.common import (
    JsonOpt,
    PolicyOpt,
    RefArg,
    _emit,
    _error_line,
    _errors,
    _policy,
    _store,
)
from adapter_registry.cli.fleet import _wait_for_fleet
from adapter_registry.cli.tables import _events_table

if TYPE_CHECKING:
    from adapter_registry.registry.store import AdapterStore


def promote(
    ref: RefArg,
    to: Annotated[str, typer.Option("--to", help="staging or production")],
    reason: Annotated[str, typer.Option(help="why; required with --force")] = "",
    force: Annotated[bool, typer.Option("--force", help="override failing gates (audited)")] = False,
    policy: PolicyOpt = None,
    canary: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--canary",
            help="production only: start a canary taking this percent (1-99) of the adapter's "
            "production traffic; `canary watch NAME` then promotes or rolls it back by its policy",
        ),
    ] = None,
    shadow: Annotated[
        bool,
        typer.Option(
            "--shadow", help="with --canary: production answers; the candidate runs on copies, recorded"
        ),
    ] = False,
    canary_policy: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--canary-policy", help="canary policy YAML (default conf/base/canary_policy.yml)"),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="exit only when every live replica of the stage serves the new digest"),
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds --wait waits (then exit 1)")] = 120.0,
    as_json: JsonOpt = False,
) -> None:
    """Move a version to staging or production after its gates pass; the replaced version is archived. With
    --canary P the version takes P% of production traffic first (gated and audited like a promotion)."""
    from adapter_registry.registry import promotion
    from adapter_registry.registry.entities import RegistryError

    with _errors():
        if canary is None and (shadow or canary_policy is not None):
            raise RegistryError("INVALID_INPUT", "--shadow and --canary-policy go with --canary PERCENT")
        if canary is not None and to != "production":
            raise RegistryError(
                "INVALID_INPUT", f"--canary shares production traffic: use it with --to production, not {to}"
            )
        store = _store()
        if canary is not None:
            from adapter_registry.rollout import begin_canary

            event = begin_canary(
                store, ref, canary, shadow=shadow, policy_file=canary_policy, reason=reason, force=force,
                policy=_policy(store, policy),
            )  # fmt: skip
            title = f"{event.model}/{event.version}: canary at {canary}%{' (shadow)' if shadow else ''}"
        else:
            event = promotion.promote(
                store, ref, to, reason=reason, force=force, policy=_policy(store, policy)
            )
            title = f"promoted {event.model}/{event.version} to {to}"
    if not wait:
        _emit(as_json, event.to_dict(), lambda: _events_table([event], title))
        return
    if not as_json:
        _events_table([event], title)
    _wait_for_fleet(store, event, to, "canary" if canary is not None else "serves", timeout, as_json)


def _parse_time(text: str, option: str) -> Any:
    """An ISO 8601 time (``2026-11-30T10:00``, a date, or with an offset); naive times are UTC."""
    import datetime as dt

    from adapter_registry.registry.entities import RegistryError

    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise RegistryError(
            "INVALID_INPUT",
            f"{option} {text!r} is not an ISO time; e.g. 2026-11-30T10:00 (UTC) or 2026-11-30",
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def rollback(
    name: Annotated[str, typer.Argument(help="adapter name")],
    stage: Annotated[str, typer.Option(help="the stage to give back to its previous holder")] = "production",
    to_time: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--to-time", help="give the stage to the version that held it then (ISO time, UTC)"),
    ] = None,
    reason: Annotated[str, typer.Option(help="why; required with --force")] = "",
    force: Annotated[bool, typer.Option("--force", help="override failing gates (audited)")] = False,
    policy: PolicyOpt = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="exit only when every live replica of the stage serves the version")
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds --wait waits (then exit 1)")] = 120.0,
    as_json: JsonOpt = False,
) -> None:
    """Give a stage back to the version that held it before, or at --to-time (gated and audited)."""
    from adapter_registry.registry import promotion

    with _errors():
        when = _parse_time(to_time, "--to-time") if to_time else None
        store = _store()
        event = promotion.rollback(
            store, name, stage, reason=reason, to_time=when, force=force, policy=_policy(store, policy)
        )
    title = f"{name}@{stage} rolled back to {event.version}"
    if not wait:
        _emit(as_json, event.to_dict(), lambda: _events_table([event], title))
        return
    if not as_json:
        _events_table([event], title)
    _wait_for_fleet(store, event, stage, "serves", timeout, as_json)


def retire(
    name: Annotated[str, typer.Argument(help="adapter name")],
    stage: Annotated[str, typer.Option(help="the stage to empty")] = "production",
    reason: Annotated[str, typer.Option(help="why (required)")] = "",
    policy: PolicyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Take a stage away from its holder (archived; `serve` stops serving it): audited, with a reason."""
    from adapter_registry.registry import promotion

    with _errors():
        store = _store()
        event = promotion.retire(store, name, stage, reason=reason, policy=_policy(store, policy))
    _emit(
        as_json, event.to_dict(), lambda: _events_table([event], f"{name}@{stage} retired (v{event.version})")
    )


def audit(name: Annotated[str, typer.Argument(help="adapter name")], as_json: JsonOpt = False) -> None:
    """The append-only history of stage changes, and who holds each stage; exits 1 when the history was tampered
    with or a stage (or the canary alias) is held by a version that no audited promotion (canary start) placed
    there. Says what the trail can prove: signed by a tracking server running the adapter-registry auth app, or
    unsigned (a local registry)."""
    from adapter_registry.checksums import files_digest
    from adapter_registry.registry.audit import AuditLog
    from adapter_registry.registry.entities import CANARY_ALIAS
    from adapter_registry.registry.stages import check_canary

    with _errors():
        store = _store()
        _require_adapter(store, name)
        log = AuditLog(store)
        trail = log.read(name)
        checks = log.stage_checks(name, trail)
        held = store.holder(name, CANARY_ALIAS, known_model=True)
        canary = check_canary(name, held.version if held else None, trail.events,
                              files_digest(held.checksums) if held else "")  # fmt: skip
    unattested = [c.problem for c in checks.values() if c.problem] + (
        [canary.problem] if canary.problem else []
    )
    problems = [*trail.problems, *unattested]
    data = {"model": name, "intact": trail.intact, "attested": not unattested, "problems": problems,
            "signed": trail.signed, "assurance": trail.assurance,
            "stages": {s: c.to_dict() for s, c in checks.items()},
            "events": [e.to_dict() for e in trail.events]}  # fmt: skip

    def render() -> None:
        _events_table(trail.events, f"audit trail of {name}")
        typer.echo(f"this trail is {trail.assurance}")

    _emit(as_json, data, render)
    if problems:
        _error_line(f"audit of {name!r} does not check out: {'; '.join(problems)}")
        raise typer.Exit(1)


def _require_adapter(store: AdapterStore, name: str) -> None:
    from adapter_registry.registry.entities import RegistryError

    if not store.model_exists(name):
        raise RegistryError("NOT_FOUND", f"adapter {name!r} is not registered")


def history(
    name: Annotated[str, typer.Argument(help="adapter name")],
    at: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--at", help="which version held each stage at this ISO time (UTC), e.g. 2026-11-30T10:00"
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every stage change of an adapter (time, actor, reason, gates), or with --at who held each stage then."""
    from adapter_registry.registry.audit import AuditLog
    from adapter_registry.registry.stages import held_at

    with _errors():
        store = _store()
        _require_adapter(store, name)
        trail = AuditLog(store).read(name)
        when = _parse_time(at, "--at") if at else None
    if when is None:
        _emit(as_json, {"model": name, "events": [e.to_dict() for e in trail.events]},
              lambda: _events_table(trail.events, f"stage changes of {name}"))  # fmt: skip
        return
    held = held_at(trail.events, when)
    data = {
        "model": name, "at": when.isoformat(),
        "stages": {stage: {"version": p.version, "since": p.event.when.isoformat(), "by": p.event.who,
                           "action": p.event.action, "seq": p.event.seq} for stage, p in sorted(held.items())},
    }  # fmt: skip

    def render() -> None:
        if not held:
            typer.echo(f"no version of {name} held staging or production at {when:%Y-%m-%d %H:%M:%S} UTC")
            return
        for stage, p in sorted(held.items()):
            typer.echo(
                f"{name}@{stage} at {when:%Y-%m-%d %H:%M:%S} UTC: version {p.version} (since "
                f"{p.event.when:%Y-%m-%d %H:%M:%S}, {p.event.action} by {p.event.who}, event #{p.event.seq})"
            )

    _emit(as_json, data, render)
