"""The serve replicas in the registry's fleet: ``fleet`` lists them, and ``promote``/``rollback --wait`` wait until
every live one serves the new version."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from adapter_registry.cli.common import JsonOpt, _console, _emit, _error_line, _errors, _store

if TYPE_CHECKING:
    from adapter_registry.registry.entities import StageChange
    from adapter_registry.registry.store import AdapterStore


def _wait_for_fleet(
    store: AdapterStore, event: StageChange, stage: str, kind: str, timeout: float, as_json: bool
) -> None:
    """Wait until every live replica of ``stage`` serves ``event``'s version (exit 1 naming those that do not)."""
    from adapter_registry.registry.fleet import wait_for_fleet

    seen: set[str] = set()

    def progress(state: Any) -> None:
        for replica in state.done:
            if replica.replica not in seen and not as_json:
                seen.add(replica.replica)
                typer.echo(
                    f"  {replica.replica} serves {state.name}/{state.version} ({state.seconds:.1f} s)",
                    err=True,
                )

    with _errors():
        version = store.get_version(event.model, event.version)
        state = wait_for_fleet(store, version, kind=kind, stage=stage, timeout=timeout, on_look=progress)  # type: ignore[arg-type]
    data = {"event": event.to_dict(), "fleet": state.to_dict()}

    def render() -> None:
        what = "its canary" if kind == "canary" else stage
        typer.echo(f"{len(state.done)} live replica(s) serve {state.name}/{state.version} as {what} "
                   f"({state.digest[:19]}…) after {state.seconds:.1f} s")  # fmt: skip
        for replica, why in state.skipped:
            typer.echo(f"  not waited for: {replica.replica} ({why})")
        for replica in state.lost:
            typer.echo(f"  lost: {replica.replica} stopped heartbeating during the wait")

    _emit(as_json, data, render)
    problems = [f"{r.replica} ({r.url}) cannot serve it: {p.kind}: {p.reason}" for r, p in state.failed]

    def held(replica: Any) -> str:
        found = (replica.serves if kind == "serves" else replica.canaries).get(state.name)
        return "nothing" if found is None else f"version {found.version} ({found.digest[:19]}…)"

    problems += [f"{r.replica} ({r.url}) still serves {held(r)} after {timeout:g} s" for r in state.pending]
    if problems:
        _error_line(f"{state.name}/{state.version} is not served by every replica: {'; '.join(problems)}")
        raise typer.Exit(1)


def fleet(
    adapter: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--adapter", help="show only this adapter's column: the version each replica serves"),
    ] = None,
    include_ended: Annotated[bool, typer.Option("--all", help="also replicas that stopped")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The serve replicas that announce themselves in the registry: address, base, stage, last heartbeat (stale
    ones marked), and per adapter the version@digest each serves, or why it cannot."""
    import time

    from adapter_registry.registry.fleet import read_fleet

    with _errors():
        store = _store()
        replicas = read_fleet(store, include_ended)
        production = store.holder(adapter, "production") if adapter else None
    now = time.time()
    data = [r.to_dict(now) for r in replicas]

    def render() -> None:
        from rich.table import Table

        table = Table(title=f"{len(replicas)} replica(s)")
        for column in ("replica", "state", "heartbeat", "base", "stage", "serves", "cannot serve"):
            table.add_column(column)
        for r in replicas:
            condition = r.condition(now)
            state = {"live": "live", "stale": "[red]STALE[/red]", "stopped": "stopped"}[condition]
            base = f"{r.base_identity} ({r.base_fingerprint[7:19]})"
            if production is not None and r.base_fingerprint != production.base_fingerprint:
                base = f"[yellow]{base}: other base[/yellow]"
            served = {n: s for n, s in r.serves.items() if adapter in (None, n)}
            canaries = {n: s for n, s in r.canaries.items() if adapter in (None, n)}
            problems = {n: p for n, p in r.problems.items() if adapter in (None, n.split(":")[0])}
            table.add_row(
                f"{r.replica}\n{r.url}", state, f"{now - r.heartbeat:.0f} s ago", base, r.stage,
                "\n".join([f"{n}/{s.version} {s.digest[7:19]}" for n, s in sorted(served.items())]
                          + [f"{n}/{s.version} {s.digest[7:19]} (canary)" for n, s in sorted(canaries.items())]),
                "\n".join(f"{n}/{p.version}: {p.kind}: {p.reason[:80]}" for n, p in sorted(problems.items())),
            )  # fmt: skip
        _console().print(table)

    _emit(as_json, data, render)
