"""``canary status|watch|stop``: a version taking a share of production traffic, decided by live quality."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from adapter_registry.cli.common import (
    JsonOpt,
    PolicyOpt,
    _console,
    _emit,
    _error_line,
    _errors,
    _policy,
    _store,
)
from adapter_registry.cli.tables import _events_table

canary_app = typer.Typer(
    help="Canaries: a version taking a share of production traffic, decided by live quality "
    "(start one with `promote NAME/V --to production --canary P`).",
    no_args_is_help=True,
)


def _canary_tables(look: Any) -> None:
    from rich.table import Table

    console = _console()
    if look.canary is None:
        typer.echo(f"no canary of {look.name} is running")
        if not look.check.ok:
            typer.echo(f"warning: {look.check.problem}", err=True)
        return
    c = look.canary
    console.print(
        f"{c.model}/{c.version} canary (event {c.seq}) at {c.percent}%{' shadow' if c.shadow else ''} against "
        f"production {c.baseline}, started {c.started:%Y-%m-%d %H:%M:%S} UTC by {c.who}; policy: "
        + ", ".join(f"{k}={v}" for k, v in c.policy.items())
    )
    table = Table(title=f"live figures of {c.model} ({sum(1 for r in look.replicas if r.get('serves_canary'))} "
                        f"replica(s))")  # fmt: skip
    for column in (
        "version",
        "side",
        "requests",
        "errors",
        "p50 ms",
        "p99 ms",
        "in set",
        "feedback",
        "agreement",
    ):
        table.add_column(column)

    def share(pair: Any) -> str:
        return "-" if not pair.n else f"{pair.k}/{pair.n} = {pair.k / pair.n:.3f}"

    for side, arm in (("candidate", look.candidate), ("production", look.baseline)):
        table.add_row(
            str(arm.version), side, str(arm.requests), str(arm.errors), str(arm.percentile(0.5) or "-"),
            str(arm.percentile(0.99) or "-"), share(arm.in_set), share(arm.feedback), share(arm.agreement),
        )  # fmt: skip
    console.print(table)
    for row in look.replicas:
        if "error" in row:
            typer.echo(
                f"warning: replica {row['replica']} ({row['url']}) did not answer: {row['error']}", err=True
            )
    console.print(f"verdict: [bold]{look.verdict.decision}[/bold]: {look.verdict.reason}")
    if not look.check.ok:
        typer.echo(f"warning: {look.check.problem}", err=True)


@canary_app.command("status")
def canary_status(
    name: Annotated[str, typer.Argument(help="adapter name")], as_json: JsonOpt = False
) -> None:
    """The running canary of NAME: its settings, the live figures of both versions summed over the fleet, and
    the verdict its policy gives them now (nothing is decided: `canary watch` decides)."""
    from adapter_registry.rollout import look_at_canary

    with _errors():
        look = look_at_canary(_store(), name)
    _emit(as_json, look.to_dict(), lambda: _canary_tables(look))


@canary_app.command("watch")
def canary_watch(
    name: Annotated[str, typer.Argument(help="adapter name")],
    interval: Annotated[float, typer.Option("--interval", help="seconds between looks")] = 5.0,
    timeout: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--timeout", help="stop watching after this many seconds (exit 4, the canary runs on)"),
    ] = None,
    policy: PolicyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Decide the canary of NAME: every --interval seconds gather the live figures of every replica, and when its
    policy says so promote the candidate (an audited promotion) or roll it back (audited, with the figures).
    Exit 0 when promoted, 2 when rolled back, 4 when --timeout passed undecided."""
    import time

    from adapter_registry.rollout import watch_canary

    def progress(look: Any) -> None:
        if as_json or look.verdict is None:
            return
        c, b = look.candidate, look.baseline
        typer.echo(f"{time.strftime('%H:%M:%S')} candidate {c.version}: {c.requests} requests, {c.errors} errors; "
                   f"production {b.version}: {b.requests} requests, {b.errors} errors; "
                   f"{look.verdict.decision}: {look.verdict.reason}", err=True)  # fmt: skip

    with _errors():
        store = _store()
        look, events = watch_canary(
            store, name, interval=interval, timeout=timeout, policy=_policy(store, policy), on_look=progress
        )
    data = {**look.to_dict(), "events": [e.to_dict() for e in events]}
    _emit(as_json, data, lambda: _events_table(events, f"canary of {name} decided") if events else None)
    if look.canary is None:
        _error_line(f"no canary of {name} is running")
        raise typer.Exit(1)
    if not events:
        raise typer.Exit(4)
    if events[-1].action == "canary_rollback":
        raise typer.Exit(2)


@canary_app.command("stop")
def canary_stop(
    name: Annotated[str, typer.Argument(help="adapter name")],
    reason: Annotated[str, typer.Option(help="why (required)")] = "",
    as_json: JsonOpt = False,
) -> None:
    """End the canary of NAME now: production answers everything again (audited, with the reason)."""
    from adapter_registry.registry.canary import end_canary

    with _errors():
        events = end_canary(_store(), name, "stop", reason=reason)
    _emit(as_json, [e.to_dict() for e in events], lambda: _events_table(events, f"canary of {name} stopped"))
