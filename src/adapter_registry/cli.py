"""``adapter-registry``: promote, audit, trace and check registered PEFT adapters.

Heavy libraries (mlflow, peft, torch) are imported inside the commands, so ``--help`` answers at once. Every
command takes ``--json``; a failure prints one line ``error: ...`` on stderr and exits non-zero (1; ``compat``
exits 3 for "retrain recommended" and 4 for "incompatible"; ``export`` exits 4 for an adapter the engine cannot
take; ``canary watch`` exits 2 when it rolled the canary back and 4 when it stopped watching undecided).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from adapter_registry.environment import network_defaults, offline_defaults

if TYPE_CHECKING:
    from adapter_registry.registry.entities import AdapterVersion, StageChange
    from adapter_registry.registry.stages import StageCheck
    from adapter_registry.registry.store import AdapterStore

app = typer.Typer(
    name="adapter-registry",
    help="Promote, audit, trace and check PEFT adapters registered in MLflow. "
    "Address a version as NAME/VERSION or NAME@STAGE.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state: dict[str, Any] = {"tracking_uri": None}

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
RefArg = Annotated[str, typer.Argument(help="NAME/VERSION or NAME@STAGE")]
PolicyOpt = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        help="promotion policy YAML of a local registry (default conf/base/promotion_policy.yml); a tracking "
        "server enforces its own",
    ),
]


@app.callback()
def _root(
    tracking_uri: Annotated[
        Optional[str],  # noqa: UP045 (typer reads the annotation)
        typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="default: sqlite:///./mlflow.db"),
    ] = None,
) -> None:
    _state["tracking_uri"] = tracking_uri
    offline_defaults()  # before any command imports mlflow, peft or transformers
    try:
        network_defaults()  # an unreachable server fails within $ADAPTER_REGISTRY_TIMEOUT, not MLflow's ~4 min
    except ValueError as exc:
        _error_line(str(exc))
        raise typer.Exit(1) from None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr keeps to one line
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout keeps to --json


def _store() -> AdapterStore:
    """The registry every command works on; one that does not exist is an error (no command creates one:
    ``make run``/``kedro run`` does, on its first registration)."""
    from adapter_registry.registry.store import AdapterStore

    uri = _state["tracking_uri"]
    return AdapterStore(uri, must_exist=True) if uri else AdapterStore.from_env(must_exist=True)


def _policy(store: AdapterStore, path: Path | None) -> Any:
    """The promotion policy of this registry (``registry.policy.policy_for``); warnings go to stderr."""
    from adapter_registry.registry.policy import policy_for

    app = store.server_app()
    warn = lambda message: typer.echo(f"warning: {message}", err=True)  # noqa: E731
    return policy_for(store.tracking_uri, None if app is None else app.get("policy"), path, warn=warn)


def _error_line(message: str) -> None:
    """``error: <message>`` on stderr, one line, with any credentials inside a URI masked."""
    from adapter_registry.registry.errors import mask_credentials

    typer.echo(f"error: {mask_credentials(message)}", err=True)


@contextmanager
def _errors() -> Iterator[None]:
    """One line on stderr and exit 1 for every registry (or input) error."""
    from adapter_registry.registry.entities import RegistryError

    try:
        yield
    except RegistryError as exc:
        _error_line(exc.message)
        raise typer.Exit(1) from None


def _emit(as_json: bool, data: Any, render: Callable[[], None]) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        render()


def _console() -> Any:
    from rich.console import Console

    return Console(width=160)


def _versions_table(
    versions: list[AdapterVersion], title: str, checks: dict[tuple[str, str], StageCheck] | None = None
) -> None:
    checks = checks or {}
    columns = ("version", "stage", "base model", "method", "key metric", "created")
    rows = []
    for v in versions:
        metric = v.key_metric
        check = checks.get((v.name, v.stage))
        stage = v.stage if check is None or check.ok else f"[red]{v.stage} (UNATTESTED)[/red]"
        rows.append((
            v.ref, stage, v.base_id or "?", v.method or "?",
            f"{metric[0]}={metric[1]:.4g}" if metric else "-", f"{v.created:%Y-%m-%d %H:%M}",
        ))  # fmt: skip
    text = _plain_table(title, columns, rows) if len(rows) > PLAIN_TABLE_ROWS else None
    if text is not None:
        typer.echo(text)
    else:
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        _console().print(table)
    for check in checks.values():
        if not check.ok:
            typer.echo(f"warning: {check.problem}", err=True)


PLAIN_TABLE_ROWS = 200  # above this, rich's layout (0.7 ms a row) would dominate a listing


def _plain_table(title: str, columns: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str | None:
    """The table rich prints without a terminal (box, padding, centred title), drawn directly: rich takes 7 s for
    10,000 rows. None when it would not fit the console's 160 columns (rich then wraps it)."""
    import re

    from rich.cells import cell_len

    def width(text: str) -> int:
        return len(text) if text.isascii() else cell_len(text)

    markup = re.compile(r"\[/?[a-z ]+\]")
    cells = [[markup.sub("", cell) if "[" in cell else cell for cell in row] for row in rows]
    widths = [max([width(c), *(width(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    total = sum(widths) + 3 * len(widths) + 1
    if total > 160:
        return None

    def line(left: str, fill: str, mid: str, right: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + right

    def row(values: list[str] | tuple[str, ...], bar: str) -> str:
        return (
            bar
            + bar.join(f" {v}{' ' * (w - cell_len(v))} " for v, w in zip(values, widths, strict=True))
            + bar
        )

    excess = max(total - width(title), 0)
    out = [" " * (excess // 2) + title + " " * (excess - excess // 2), line("┏", "━", "┳", "┓"), row(columns, "┃"),
           line("┡", "━", "╇", "┩"), *(row(r, "│") for r in cells), line("└", "─", "┴", "┘")]  # fmt: skip
    return "\n".join(out)


def _stage_checks(store: AdapterStore, versions: list[AdapterVersion]) -> dict[tuple[str, str], StageCheck]:
    """(name, stage) -> the check of every staging/production holder among ``versions`` (one audit search)."""
    from adapter_registry.registry.audit import AuditLog
    from adapter_registry.registry.entities import PROMOTION_STAGES
    from adapter_registry.registry.stages import check_stages

    holders: dict[str, dict[str, int | None]] = {}
    for v in versions:
        if v.stage in PROMOTION_STAGES:
            holders.setdefault(v.name, {})[v.stage] = v.version
    if not holders:
        return {}
    log = AuditLog(store)  # a few adapters: their own trails; many: every trail in one search
    trails = {n: log.read(n) for n in holders} if len(holders) <= 5 else log.read_all()
    out = {}
    for name, held in holders.items():
        events = trails[name].events if name in trails else ()
        for stage, check in check_stages(name, held, events, tuple(held)).items():
            out[(name, stage)] = check
    return out


def _with_attestation(v: AdapterVersion, checks: dict[tuple[str, str], StageCheck]) -> dict[str, Any]:
    check = checks.get((v.name, v.stage))
    return {**v.to_dict(), "attested": None if check is None else check.ok,
            "attestation": None if check is None else check.problem}  # fmt: skip


def _events_table(events: list[StageChange] | tuple[StageChange, ...], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in (
        "#",
        "when (UTC)",
        "who",
        "action",
        "version",
        "from → to",
        "forced",
        "gates",
        "reason",
        "ok",
    ):
        table.add_column(column)
    for e in events:
        gates = ", ".join(f"{'✓' if g.passed else '✗'} {g.gate}" for g in e.gates) or "-"
        table.add_row(
            str(e.seq), f"{e.when:%Y-%m-%d %H:%M:%S}", e.who, e.action, str(e.version),
            f"{e.from_stage} → {e.to_stage}", "yes" if e.forced else "", gates, e.reason, "" if e.verified else "✗",
        )  # fmt: skip
    _console().print(table)


# ------------------------------------------------------------------------------------------------ commands
@app.command("list")
def list_(
    stage: Annotated[Optional[str], typer.Option(help="candidate, staging, production or archived")] = None,  # noqa: UP045
    base_model: Annotated[Optional[str], typer.Option("--base-model", help="base id or fingerprint")] = None,  # noqa: UP045
    method: Annotated[Optional[str], typer.Option(help="PEFT method, e.g. lora")] = None,  # noqa: UP045
    as_json: JsonOpt = False,
) -> None:
    """Adapters and versions with stage, base model, method, key metric, created.

    A staging or production holder that no audited promotion placed (its alias moved outside adapter-registry) is
    marked UNATTESTED.
    """
    with _errors():
        store = _store()
        versions = store.list_versions(stage=stage, base_model=base_model, method=method, summary=True)
        checks = _stage_checks(store, versions)
    _emit(
        as_json,
        [_with_attestation(v, checks) for v in versions],
        lambda: _versions_table(versions, f"{len(versions)} versions", checks),
    )


@app.command()
def show(
    ref: RefArg,
    show_all: Annotated[bool, typer.Option("--all", help="also every raw tag, as recorded")] = False,
    as_json: JsonOpt = False,
) -> None:
    """One version in sections: stage, metrics with their 95% intervals, gates, lineage (``--all``: every raw tag).
    An unattested stage holder is marked."""
    with _errors():
        store = _store()
        version = store.resolve(ref)
        checks = _stage_checks(store, [version])
    check = checks.get((version.name, version.stage))

    def render() -> None:
        console = _console()
        for line in _show_sections(version, check):
            console.print(line, markup=False, highlight=False)
        if show_all:
            from rich.table import Table

            table = Table(title="every tag", show_header=False)
            for key, value in sorted(version.tags.items()):
                table.add_row(key, value)
            console.print(table)
        if check is not None and not check.ok:
            typer.echo(f"warning: {check.problem}", err=True)

    _emit(as_json, _with_attestation(version, checks), render)


def _show_sections(version: AdapterVersion, check: StageCheck | None) -> list[str]:
    """``show``'s text: stage, metrics (95% interval, baseline), gates, lineage summary, warnings, files."""
    from adapter_registry.registry.entities import Tag
    from adapter_registry.registry.lineage import datasets_of, gates_of, must_beat_base

    tags, metrics = version.tags, version.metrics
    attested = "" if check is None else (" (attested)" if check.ok else " (UNATTESTED)")
    out = [f"{version.ref}", f"  stage      {version.stage}{attested}"
           + (f"   aliases: {', '.join(version.aliases)}" if version.aliases else ""),
           f"  created    {version.created:%Y-%m-%d %H:%M} UTC   run {version.run_id}"]  # fmt: skip
    if version.description:
        out.append(f"  about      {version.description.splitlines()[0].lstrip('# ')}")
    out.append("metrics (test split, 95% interval; baseline)")
    names = [
        m
        for m in metrics
        if not m.startswith("base.") and m != "beats_base" and not m.endswith(("_ci_low", "_ci_high"))
    ]
    for name in names:
        low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
        interval = f" [{low:.4f}, {high:.4f}]" if low is not None and high is not None else ""
        base = metrics.get(f"base.{name}")
        out.append(
            f"  {name:<12} {metrics[name]:.4f}{interval}"
            + (f"   baseline {base:.4f}" if base is not None else "")
        )
    if "beats_base" in metrics:
        out.append(f"  beats its baseline: {'yes' if metrics['beats_base'] == 1.0 else 'NO'}")
    out.append("gates (checked again at each promotion)")
    for text, gate in gates_of(version):
        if isinstance(gate, ValueError):
            out.append(f"  ✗ {text}: {gate}")
            continue
        value = metrics.get(gate.metric)
        mark = "?" if value is None else ("✓" if gate.passes(value) else "✗")
        out.append(
            f"  {mark} {text}"
            + (f"  ({gate.metric} = {value:.4g})" if value is not None else "  (not recorded)")
        )
    out.append(f"  {'✓' if metrics.get('beats_base') == 1.0 else '✗'} beats its baseline"
               if must_beat_base(version) else "  - must beat its baseline: no (recipe)")  # fmt: skip
    out.append("lineage (`adapter-registry lineage` for the whole tree)")
    dirty = " (dirty)" if tags.get(Tag.GIT_DIRTY) == "true" else ""
    out.append(f"  recipe     {tags.get(Tag.RECIPE_NAME, '?')} ({tags.get(Tag.RECIPE_HASH, '')[:12]}), "
               f"git {tags.get(Tag.GIT_COMMIT, '?')[:10]}{dirty}")  # fmt: skip
    hub = tags.get(Tag.BASE_HUB_ID, "")
    out.append(f"  base       {version.base_id or '?'}" + (f" = {hub}" if hub and hub != version.base_id else "")
               + f", {version.base_fingerprint[:23] or 'no fingerprint'}")  # fmt: skip
    share = tags.get(Tag.TRAINABLE_SHARE)
    trainable = f", {100 * float(share):.2f}% trainable" if share else ""
    out.append(f"  method     {version.method or '?'} ({tags.get(Tag.METHOD_FAMILY, '?')}){trainable}")
    for d in datasets_of(version):
        out.append(f"  data       {d.split} split: {d.path} md5 {d.md5}")
    warnings = _parsed_tag(tags.get(Tag.WARNINGS))
    if warnings:
        out.append("warnings")
        out += [f"  - {w}" for w in warnings]
    out.append(
        f"files: {len(version.checksums)} with a recorded sha256; every raw tag: show {version.ref} --all"
    )
    return out


def _parsed_tag(value: str | None) -> Any:
    try:
        return json.loads(value) if value else None
    except ValueError:
        return value


@app.command()
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


@app.command()
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


@app.command()
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


@app.command()
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


@app.command()
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


@app.command()
def lineage(
    ref: Annotated[Optional[str], typer.Argument(help="NAME/VERSION or NAME@STAGE")] = None,  # noqa: UP045
    dataset: Annotated[
        str | None, typer.Option(help="reverse: versions built from PATH or PATH@MD5 (an md5 alone: --md5)")
    ] = None,
    md5: Annotated[
        str | None, typer.Option(help="reverse: versions built from data with this DVC md5")
    ] = None,
    base_model: Annotated[
        str | None, typer.Option("--base-model", help="reverse: base id or fingerprint")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, mermaid, dot or html")] = "table",
    output: Annotated[Path | None, typer.Option(help="write mermaid/dot/html here instead of stdout")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Where a version came from; or, with --dataset/--md5/--base-model, every version built from it."""
    from adapter_registry.registry import lineage as lin
    from adapter_registry.registry.entities import RegistryError

    with _errors():
        asked = [x for x in (ref, dataset, md5, base_model) if x]
        if len(asked) != 1:
            raise RegistryError(
                "INVALID_INPUT", "give exactly one of NAME/VERSION, --dataset, --md5 or --base-model"
            )
        if fmt not in ("table", "mermaid", "dot", "html"):
            raise RegistryError("INVALID_INPUT", f"--format {fmt!r} is not one of table, mermaid, dot, html")
        store = _store()
        if ref is None:
            if dataset:
                _reverse_dataset(dataset)
                versions, what = lin.versions_from_dataset(store, dataset), f"dataset {dataset}"
            elif md5:
                versions, what = lin.versions_from_md5(store, md5), f"data md5 {md5}"
            else:
                assert base_model is not None
                versions, what = lin.versions_from_base(store, base_model), f"base {base_model}"
            _emit(as_json, [v.to_dict() for v in versions],
                  lambda: _versions_table(versions, f"{len(versions)} versions built from {what}"))  # fmt: skip
            return
        graph = lin.lineage_of(store, ref)
    if fmt != "table" and not as_json:
        text = {"mermaid": lin.to_mermaid, "dot": lin.to_dot, "html": lin.to_html}[fmt](graph)
        if output:
            output.write_text(text)
            typer.echo(f"wrote {output}")
        else:
            typer.echo(text, nl=False)
        return

    _emit(as_json, graph.to_dict(), lambda: _console().print(_lineage_tree(graph)))


MD5 = r"[0-9a-f]{32}"


def _reverse_dataset(dataset: str) -> None:
    """``--dataset`` takes PATH or PATH@MD5; a bare md5 is a mistake worth naming."""
    import re

    from adapter_registry.registry.entities import RegistryError

    if re.fullmatch(MD5, dataset.strip().lower()):
        raise RegistryError(
            "INVALID_INPUT",
            f"--dataset takes a path (PATH or PATH@MD5); {dataset!r} is an md5: did you mean --md5 {dataset}?",
        )


def _summary(value: Any, keys: tuple[str, ...]) -> str:
    """``key=value`` of the ``keys`` a JSON tag holds (lists joined), for one line of the tree."""
    if not isinstance(value, dict):
        return "-" if value is None else str(value)
    shown = []
    for key in keys:
        if value.get(key) not in (None, "", [], {}):
            item = value[key]
            shown.append(f"{key}={','.join(map(str, item)) if isinstance(item, list) else item}")
    return " ".join(shown) or "-"


PEFT_KEYS = (
    "peft_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "base_model_name_or_path",
    "revision",
)
TRAINING_KEYS = ("epochs", "max_steps", "batch_size", "learning_rate", "lr_schedule", "max_length", "seed")


def _lineage_tree(graph: Any) -> Any:
    """The lineage as a rich tree: one line per fact, no JSON; the data splits and the data-validation report
    under distinct names."""
    from rich.markup import escape
    from rich.tree import Tree

    v = graph.version
    tree = Tree(f"[bold]{escape(v.ref)}[/] ({v.stage}) run {v.run_id}")
    data = tree.add("data")
    for d in graph.datasets:
        data.add(
            escape(
                f"{d.split} split: {d.path} md5={d.md5}"
                + (f" (dvc.lock at {d.commit[:10]})" if d.commit else "")
            )
        )
    validation = graph.data_validation if isinstance(graph.data_validation, dict) else {}
    success = validation.get("success")
    verdict = "passed" if success is True else "FAILED" if success is False else "not recorded"
    stats = validation.get("statistics") or {}
    rows = ", ".join(f"{split} {n}" for split, n in (stats.get("rows") or {}).items())
    counted = f", {stats['expectations']} expectations" if "expectations" in stats else ""
    counted += f" on {rows} rows" if rows else ""
    report = data.add(escape(f"data-validation report (Great Expectations + dvc.lock): {verdict}{counted}"))
    for failure in validation.get("failures") or []:
        if isinstance(failure, dict):
            on = f"({failure['column']})" if failure.get("column") else ""
            failure = f"[{failure.get('split')}] {failure.get('expectation')}{on}: {failure.get('detail')}"
        report.add(escape(str(failure)))
    dirty = " (dirty: uncommitted changes)" if graph.code_dirty == "true" else ""
    tree.add(escape(f"code: git {graph.code_commit or '?'}{dirty}"))
    tree.add(escape(f"recipe: {graph.recipe['name']} sha256 {graph.recipe['hash'][:16]}"))
    base = graph.base
    hub = f" = {base['hub_id']}" if base.get("hub_id") and base["hub_id"] != base["id"] else ""
    tree.add(escape(f"base: {base['id']}{hub} {base['fingerprint']} {base['architecture']}"))
    tree.add(escape(f"adapter: {v.method or '?'} {_summary(graph.peft_config, PEFT_KEYS)}"))
    if graph.training is not None:
        tree.add(escape(f"training: {_summary(graph.training, TRAINING_KEYS)}"))
    if graph.parents:  # a composed adapter: the registered versions it was built from
        parents = tree.add("parents")
        for parent in graph.parents:
            role = f"weight={parent['weight']}" if "weight" in parent else parent.get("role", "expert")
            parents.add(escape(f"{parent.get('version')} {role}"))
    shown = {k: val for k, val in sorted(v.metrics.items()) if not k.endswith(("_ci_low", "_ci_high"))}
    tree.add("metrics: " + ", ".join(f"{k}={val:.4g}" for k, val in shown.items()))
    history = tree.add("history")
    for e in graph.history:
        history.add(
            escape(f"{e.when:%Y-%m-%d %H:%M} {e.who} {e.action} v{e.version} {e.from_stage}→{e.to_stage}")
        )
    return tree


@app.command()
def compat(
    ref: RefArg,
    base: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--base", help="base model folder, offline base name or its hub id"),
    ] = None,
    engine: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--engine", help="check against a serving engine's rules instead of a base: vllm"),
    ] = None,
    max_lora_rank: Annotated[
        int, typer.Option("--max-lora-rank", help="with --engine vllm: the servers' --max-lora-rank")
    ] = 16,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="every check, one row each")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check that an adapter fits a base (exit 0 compatible, 3 retrain recommended, 4 incompatible), or with
    --engine vllm that vLLM can serve it (exit 0, or 4 with every reason and its fix)."""
    import tempfile

    from adapter_registry.registry.entities import RegistryError
    from adapter_registry.registry.routed import routed_compat

    with _errors(), tempfile.TemporaryDirectory() as tmp:
        if (base is None) == (engine is None):
            raise RegistryError("INVALID_INPUT", "give exactly one of --base BASE or --engine vllm")
        store = _store()
        version = store.pull(ref, Path(tmp) / "adapter")
        if engine is not None:
            report = _engine_report(version, Path(tmp) / "adapter", engine, max_lora_rank)
        else:
            assert base is not None
            # a router or an Arrow mixture: each of its experts
            report = routed_compat(store, version, Path(tmp) / "adapter", base, Path(tmp))

    summary = _compat_summary(report.checks)

    def render() -> None:
        from rich.markup import escape
        from rich.table import Table

        console = _console()
        title = f"{report.version} on {report.base}: {report.outcome} (exit {report.exit_code})"
        if verbose:
            table = Table(title=title)
            for column in ("check", "ok", "detail"):
                table.add_column(column)
            for c in report.checks:
                table.add_row(c.name, "✓" if c.passed else "✗", c.detail)
            console.print(table)
            return
        console.print(escape(title), highlight=False)
        for c in summary:
            console.print(escape(f"  {'✓' if c.passed else '✗'} {c.name}: {c.detail}"), highlight=False)
        console.print(f"every check ({len(report.checks)}): --verbose", highlight=False)

    _emit(as_json, report.to_dict(), render)
    if report.exit_code:
        reason = "; ".join(f"{c.name}: {c.detail}" for c in summary if not c.passed)
        _error_line(f"{report.outcome}: {reason}")
        raise typer.Exit(report.exit_code)


def _compat_summary(checks: Any) -> list[Any]:
    """The checks a person reads: each failed one, one line for the adapter's target modules (how many are
    missing from the base or shaped otherwise, with examples), and one for the rest that passed."""
    from adapter_registry.registry.compat import Check

    modules = [c for c in checks if c.name.startswith("module ")]
    others = [c for c in checks if not c.name.startswith("module ")]
    out = [c for c in others if not c.passed]
    if modules:
        missing = [
            c.name.removeprefix("module ") for c in modules if not c.passed and "not found" in c.detail
        ]
        shaped = [c for c in modules if not c.passed and "not found" not in c.detail]
        total = len(modules)
        if missing:
            out.append(Check("target modules", False, f"{len(missing)} of {total} missing from the base, e.g. "
                             + ", ".join(missing[:3])))  # fmt: skip
        if shaped:
            out.append(Check("target modules", False, f"{len(shaped)} of {total} shaped otherwise, e.g. "
                             f"{shaped[0].name}: {shaped[0].detail}"))  # fmt: skip
        if not missing and not shaped:
            out.append(
                Check("target modules", True, f"all {total} found in the base, with the adapter's shapes")
            )
    out += [c for c in others if c.passed and c.name == "note"]  # an engine's warnings: each said
    passed = [c.name for c in others if c.passed and c.name != "note"]
    if passed:
        out.append(Check(f"{len(passed)} other checks", True, ", ".join(passed)))
    return out


def _engine_report(version: AdapterVersion, folder: Path, engine: str, max_lora_rank: int) -> Any:
    """``compat --engine``: the engine's rules as compat checks (a warning is a passed check that says so)."""
    from adapter_registry.registry.compat import COMPATIBLE, INCOMPATIBLE, Check, CompatReport
    from adapter_registry.registry.entities import RegistryError

    if engine != "vllm":
        raise RegistryError("INVALID_INPUT", f"--engine {engine!r} is not known; the engines checked: vllm")
    _check_rank(max_lora_rank)
    from adapter_registry.vllm.export import check_version

    verdict = check_version(version, folder, max_lora_rank)
    checks = [
        Check(f.rule, f.ok, f.detail if f.ok else f"{f.detail}. Fix: {f.fix}") for f in verdict.findings
    ]
    checks += [Check("note", True, w) for w in (*verdict.base.warnings, *verdict.warnings)]
    return CompatReport(
        version=version.ref, base=f"vllm (--max-lora-rank {max_lora_rank}) as {verdict.lora_name}",
        outcome=COMPATIBLE if verdict.ok else INCOMPATIBLE, checks=tuple(checks),
    )  # fmt: skip


def _check_rank(max_lora_rank: int) -> None:
    from adapter_registry.registry.entities import RegistryError
    from adapter_registry.vllm.rules import MAX_LORA_RANKS

    if max_lora_rank not in MAX_LORA_RANKS:
        raise RegistryError(
            "INVALID_INPUT",
            f"--max-lora-rank {max_lora_rank} is not a value vLLM accepts: {', '.join(map(str, MAX_LORA_RANKS))}",
        )


@app.command()
def export(
    ref: RefArg,
    dest: Annotated[Path, typer.Argument(help="empty or new folder")],
    fmt: Annotated[str, typer.Option("--format", help="the serving engine's format: vllm")] = "vllm",
    max_lora_rank: Annotated[
        int, typer.Option("--max-lora-rank", help="the --max-lora-rank the vLLM servers run with")
    ] = 16,
    as_json: JsonOpt = False,
) -> None:
    """Write a folder a serving engine loads as it is (sha256-checked pull): for vLLM, hub base id, safetensors,
    the serving contract and a README. An adapter the engine cannot take is refused (exit 4) with the fix."""
    from adapter_registry.registry.entities import RegistryError

    with _errors():
        if fmt != "vllm":
            raise RegistryError("INVALID_INPUT", f"--format {fmt!r} is not known; the formats written: vllm")
        _check_rank(max_lora_rank)
        from adapter_registry.vllm.export import ExportRefused, export_version

        try:
            report = export_version(_store(), ref, dest, max_lora_rank)
        except ExportRefused as exc:
            _emit(as_json, {"version": exc.ref, "ok": False, "findings": [f.to_dict() for f in exc.findings]},
                  lambda: None)  # fmt: skip
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(4) from None
        except FileExistsError as exc:
            raise RegistryError("INVALID_INPUT", str(exc)) from None

    def render() -> None:
        typer.echo(f"exported {report.check.ref} to {dest} as {report.check.lora_name}")
        typer.echo(f"base_model_name_or_path: {report.check.base.name_or_path}"
                   + (f" (revision {report.check.base.revision})" if report.check.base.revision else ""))  # fmt: skip
        for warning in (*report.check.base.warnings, *report.check.warnings):
            typer.echo(f"warning: {warning}", err=True)
        typer.echo(f"serve it: see {dest / 'README.md'}")

    _emit(as_json, report.to_dict(), render)


@app.command()
def pull(
    ref: RefArg, dest: Annotated[Path, typer.Argument(help="empty or new folder")], as_json: JsonOpt = False
) -> None:
    """Download an adapter, verifying every file's sha256 against the registered checksums."""
    with _errors():
        version = _store().pull(ref, dest)
    data = {
        "version": version.ref,
        "stage": version.stage,
        "dest": str(dest),
        "files": sorted(version.checksums),
    }
    _emit(
        as_json,
        data,
        lambda: typer.echo(f"pulled {version.ref} ({len(version.checksums)} files verified) to {dest}"),
    )


@app.command()
def serve(
    base: Annotated[
        str, typer.Option("--base", help="offline base (smollm2-135m-instruct) or a local model folder")
    ],
    stage: Annotated[
        str, typer.Option("--stage", help="serve the version of each adapter that holds this stage")
    ] = "production",
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    poll_seconds: Annotated[
        float, typer.Option("--poll-seconds", help="how often the registry is re-read")
    ] = 10.0,
    tenants: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--tenants", help="tenant -> adapter YAML (default conf/base/tenants.yml)"),
    ] = None,
    max_prompt_tokens: Annotated[
        int,
        typer.Option(
            "--max-prompt-tokens",
            min=1,
            help="longer prompts are refused (413): one would stall its whole batch",
        ),
    ] = 2048,
    quantization: Annotated[
        str,
        typer.Option(
            "--quantization",
            help="load the base quantised (nf4, nf4-dq, fp4, fp4-dq, int8) to serve QLoRA adapters on the base "
            "they were evaluated on; default: full precision",
        ),
    ] = "",
    request_log: Annotated[
        Path, typer.Option("--request-log", help="JSON line per request, rotated at 10 MB ('' for none)")
    ] = Path("logs/requests.jsonl"),
    log_prompts: Annotated[
        bool, typer.Option("--log-prompts", help="also write each request's input, prompt and answer")
    ] = False,
    webhook_url: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--webhook-url",
            help="this server's /v1/registry/events URL as the tracking server reaches it: registers a signed "
            "MLflow webhook so an alias move is served at once (polling stays on)",
        ),
    ] = None,
    max_resident: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--max-resident",
            min=1,
            help="adapters loaded at once; the others load on their first request, the least recently used "
            "making room (default: all)",
        ),
    ] = None,
    pin: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--pin", help="adapter or tenant always resident (repeat for several)"),
    ] = None,
    adapter_cache: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--adapter-cache", help="folder for pulled adapter files, kept (default: a temporary one)"
        ),
    ] = None,
    max_queue: Annotated[
        int,
        typer.Option("--max-queue", min=1, help="requests waiting for a batch; beyond: 429 + Retry-After"),
    ] = 64,
    request_timeout: Annotated[
        float,
        typer.Option(
            "--request-timeout", help="seconds a request may take; then 504 and its work is dropped"
        ),
    ] = 60.0,
    shutdown_timeout: Annotated[
        float,
        typer.Option(
            "--shutdown-timeout", help="seconds in-flight requests get after SIGTERM before they stop"
        ),
    ] = 5.0,
    heartbeat_seconds: Annotated[
        float,
        typer.Option(
            "--heartbeat-seconds",
            help="announce this replica and what it serves in the registry's fleet this often (0: never)",
        ),
    ] = 5.0,
    advertise_url: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--advertise-url", help="this replica's URL as operators reach it (default http://HOST:PORT)"
        ),
    ] = None,
    feedback_ttl: Annotated[
        float, typer.Option("--feedback-ttl", help="seconds an answer takes feedback (POST /v1/feedback)")
    ] = 3600.0,
) -> None:
    """Serve every STAGE adapter registered for BASE over HTTP: many adapters on one base model."""
    from adapter_registry.serving.app import ServeOptions
    from adapter_registry.serving.app import serve as run_server
    from adapter_registry.serving.tenants import TenantsError

    options = ServeOptions(
        stage=stage, host=host, port=port, tracking_uri=_state["tracking_uri"], poll_seconds=poll_seconds,
        tenants_file=tenants, max_prompt_tokens=max_prompt_tokens, quantization=quantization,
        request_log=request_log if str(request_log) not in ("", ".") else None, log_prompts=log_prompts,
        webhook_url=webhook_url, max_resident=max_resident, pin=tuple(pin or ()), adapter_cache=adapter_cache,
        max_queue=max_queue, request_timeout=request_timeout, shutdown_timeout=shutdown_timeout,
        heartbeat_seconds=heartbeat_seconds, advertise_url=advertise_url, feedback_ttl=feedback_ttl,
    )  # fmt: skip
    try:
        with _errors():
            run_server(base, options)
    except (TenantsError, ValueError) as exc:
        _error_line(str(exc))
        raise typer.Exit(1) from None


@app.command("vllm-sync")
def vllm_sync(
    url: Annotated[
        list[str], typer.Option("--url", help="a vLLM server, e.g. http://gpu-1:8000 (repeat the option)")
    ],
    stage: Annotated[
        str, typer.Option("--stage", help="load the attested holder of this stage")
    ] = "production",
    once: Annotated[
        bool, typer.Option("--once", help="one poll, then exit (1 when a server failed)")
    ] = False,
    poll_seconds: Annotated[
        float, typer.Option("--poll-seconds", help="how often the registry is re-read")
    ] = 10.0,
    cache: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--cache",
            help="export cache; the servers must read the same paths (default "
            "~/.cache/adapter_registry/vllm)",
        ),
    ] = None,
    tenants: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--tenants", help="tenant -> adapter YAML (default conf/base/tenants.yml)"),
    ] = None,
    aliases: Annotated[
        bool, typer.Option("--aliases", help="also load NAME@STAGE and tenant names (one LoRA slot each)")
    ] = False,
    max_lora_rank: Annotated[
        int, typer.Option("--max-lora-rank", help="the --max-lora-rank the servers run with")
    ] = 16,
    api_key: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--api-key", envvar="VLLM_API_KEY", help="the servers' --api-key"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Load the attested stage holders on running vLLM servers under digest names (NAME@sha256:...), and unload
    what left the stage; report per server what is loaded."""
    import time

    from adapter_registry.serving.tenants import TenantsError, load_tenants
    from adapter_registry.vllm.resolver import DEFAULT_CACHE, RegistryResolver
    from adapter_registry.vllm.sync import FleetSync, VllmServer

    with _errors():
        _check_rank(max_lora_rank)
    try:
        tenant_map = load_tenants(tenants)
        resolver = RegistryResolver(_store(), cache or DEFAULT_CACHE, stage, tenant_map, max_lora_rank)
    except (TenantsError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    servers = [VllmServer(u, api_key) for u in url]
    fleet = FleetSync(resolver, servers, aliases=aliases)
    last: str | None = None
    try:
        while True:
            with _errors():
                report = fleet.sync_once()
            summary = json.dumps(report.to_dict(), sort_keys=True, default=str)
            if summary != last:
                _emit(as_json, report.to_dict(), lambda r=report: _sync_table(r))  # type: ignore[misc]
                last = summary
            if once:
                if not report.ok:
                    raise typer.Exit(1)
                return
            time.sleep(poll_seconds)
    finally:
        for server in servers:
            server.close()


def _sync_table(report: Any) -> None:
    from rich.table import Table

    console = _console()
    for server in report.servers:
        table = Table(title=f"{server.url} (base {server.base or '?'}): {len(server.loaded)} adapters loaded")
        for column in ("name", "version", "digest", "current"):
            table.add_column(column)
        for row in server.loaded:
            table.add_row(row["name"], row["version"] or "?", row["digest"][:19] + "…" if row["digest"] else "?",
                          row["current"])  # fmt: skip
        console.print(table)
        for name in server.added:
            console.print(f"loaded {name}")
        for name in server.removed:
            console.print(f"unloaded {name}")
        for ref, why in server.refused.items():
            typer.echo(f"warning: {server.url}: not loading {ref}: {why}", err=True)
        for note in server.notes:
            typer.echo(f"note: {server.url}: {note}", err=True)
        for error in server.errors:
            typer.echo(f"error: {error}", err=True)
    for name, why in report.held_back.items():
        typer.echo(f"warning: {name}: {why}", err=True)
    for ref, why in report.refused.items():
        typer.echo(f"warning: not loading {ref}: {why}", err=True)


@app.command()
def reproduce(
    ref: RefArg,
    workdir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--workdir", help="new or empty folder for the worktree (kept); default: a temp dir"),
    ] = None,
    tolerance: Annotated[
        float, typer.Option("--tolerance", help="max |reproduced - registered| per metric (absolute)")
    ] = 1e-6,
    allow_dirty: Annotated[
        bool, typer.Option("--allow-dirty", help="re-run the committed code of a version trained dirty")
    ] = False,
    keep: Annotated[bool, typer.Option("--keep", help="keep the temporary worktree")] = False,
    repo: Annotated[Path, typer.Option("--repo", help="git + DVC repository holding the commit")] = Path(),
    as_json: JsonOpt = False,
) -> None:
    """Re-train a version from its recorded commit and DVC data in a git worktree; compare the metrics.

    Exit 0 when every metric is within --tolerance, 3 when some differ, 1 when it is refused or fails.
    """
    from adapter_registry.reproduce import ReproduceError
    from adapter_registry.reproduce import reproduce as run_reproduce

    try:
        with _errors():
            report = run_reproduce(
                _store(), ref, repo=repo, workdir=workdir, tolerance=tolerance, allow_dirty=allow_dirty,
                keep=True if keep or workdir is not None else None,
                log=lambda msg: typer.echo(msg, err=True),
            )  # fmt: skip
    except ReproduceError as exc:
        _error_line(exc.message)
        raise typer.Exit(1) from None

    def render() -> None:
        from rich.table import Table

        verdict = "reproduced" if report.passed else "[red]NOT reproduced[/red]"
        title = f"{report.version} at {report.commit[:10]}: {verdict} (tolerance {report.tolerance:g})"
        table = Table(title=title)
        for column in ("metric", "registered", "reproduced", "difference", "ok"):
            table.add_column(column)
        for m in report.metrics:
            table.add_row(
                m.name, "-" if m.registered is None else f"{m.registered:.10g}",
                "-" if m.reproduced is None else f"{m.reproduced:.10g}",
                "-" if m.diff is None else f"{m.diff:+.3g}", "✓" if m.passed else "✗",
            )  # fmt: skip
        console = _console()
        console.print(table)
        for d in report.data:
            console.print(f"data {d.split}: {d.path} md5 {d.fetched_md5} ({d.source}, at {d.commit[:10]})")
        for key, value in report.lineage.items():
            if not value["equal"]:
                was, now = value["registered"], value["reproduced"]
                console.print(f"[red]lineage differs[/red] {key}: {was} -> {now}")
        for warning in report.warnings:
            console.print(f"[yellow]warning[/yellow] {warning}")
        where = report.workdir + ("" if report.kept else " (removed)")
        console.print(f"{report.seconds:.0f} s; worktree {where}")

    _emit(as_json, report.to_dict(), render)
    if not report.passed:
        _error_line(f"{report.version} did not reproduce: {report.reason}")
        raise typer.Exit(3)


@app.command()
def recipes(
    root: Annotated[Path, typer.Option("--root", help="the project folder holding pipelines/")] = Path(),
    as_json: JsonOpt = False,
) -> None:
    """The recipes of pipelines/ (name, base, task, method, data): a CI matrix runs one
    `kedro run --namespaces NAME` per recipe (see docs/ci.md). A composed or routed recipe lists the adapters it
    needs."""
    from adapter_registry.recipes.load import RecipeError, load_recipes

    try:
        found = load_recipes(root)
    except RecipeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    rows: list[dict[str, Any]] = []
    for name, recipe in sorted(found.items()):
        data = {
            "train": recipe.data_spec.train,
            "validation": recipe.data_spec.validation,
            "test": recipe.data_spec.test,
        }
        rows.append({
            "name": name, "base": recipe.base.identity, "task": recipe.task.type,
            "method": recipe.method.type if recipe.method is not None else "composition",
            "registered_as": recipe.registration.model_name or name,
            "data": {split: path for split, path in data.items() if path},
            "needs": sorted({ref.replace("@", "/").split("/")[0] for ref in recipe.expert_refs}),
            "command": f"kedro run --namespaces {name}",
        })  # fmt: skip

    def render() -> None:
        from rich.table import Table

        table = Table(title=f"{len(rows)} recipes in {root / 'pipelines'}")
        for column in ("name", "base", "task", "method", "train data", "needs"):
            table.add_column(column)
        for r in rows:
            table.add_row(
                r["name"], r["base"], r["task"], r["method"], r["data"]["train"], ", ".join(r["needs"])
            )
        _console().print(table)

    _emit(as_json, rows, render)


# ------------------------------------------------------------------------------------------------ team stack
stack_app = typer.Typer(
    help="The team registry on this machine: PostgreSQL + mlflow server (the adapter-registry auth app: "
    "basic-auth, protected stages, a signed audit trail; proxied artifacts) kept in one folder (default .team/). "
    '`eval "$(adapter-registry stack up)"` points this shell at it.',
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")
FolderOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--folder", envvar="ADAPTER_REGISTRY_TEAM_DIR", help="where the stack lives (default .team)"
    ),
]


@contextmanager
def _stack_errors() -> Iterator[None]:
    from adapter_registry.stack import StackError

    try:
        yield
    except StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@stack_app.command("up")
def stack_up(
    folder: FolderOpt = None,
    port: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--port", help="the tracking server's port (default: the last one, else 5000)"),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="interface to bind; 0.0.0.0 serves the LAN")
    ] = "127.0.0.1",
    workers: Annotated[int, typer.Option("--workers", min=1, help="server worker processes")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Start PostgreSQL and the tracking server (whatever is not running), wait until they answer, then print the
    `export` lines that point a shell at them (progress goes to stderr)."""
    from adapter_registry.stack import Stack

    stack = Stack(folder)
    with _stack_errors():
        status = stack.up(port=port, host=host, workers=workers, log=lambda m: typer.echo(m, err=True))
        exports = stack.exports()
    if as_json:
        env = dict(line.removeprefix("export ").split("=", 1) for line in exports)
        typer.echo(json.dumps({**status.to_dict(), "env": env}, indent=2))
        return
    typer.echo("\n".join(exports))


@stack_app.command("down")
def stack_down(folder: FolderOpt = None, as_json: JsonOpt = False) -> None:
    """Stop the tracking server and PostgreSQL; the data stays in the folder (`rm -r` it to start afresh)."""
    from adapter_registry.stack import Stack

    with _stack_errors():
        status = Stack(folder).down(log=lambda m: typer.echo(m, err=True))
    _emit(as_json, status.to_dict(), lambda: typer.echo(f"stopped; data kept in {status.folder}"))


@stack_app.command("status")
def stack_status(folder: FolderOpt = None, as_json: JsonOpt = False) -> None:
    """What runs: PostgreSQL, the tracking server and its URI; exits 1 unless both run."""
    from adapter_registry.stack import Stack

    with _stack_errors():
        status = Stack(folder).status()

    def render() -> None:
        typer.echo(f"folder      {status.folder}")
        typer.echo(
            f"postgres    {'running on 127.0.0.1:' + str(status.details['postgres_port']) if status.postgres else 'stopped'}"
        )
        typer.echo(f"mlflow      {'running at ' + str(status.tracking_uri) if status.mlflow else 'stopped'}")
        typer.echo(f"artifacts   {status.details['artifacts']}")

    _emit(as_json, status.to_dict(), render)
    if not (status.postgres and status.mlflow):
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------ rollouts
canary_app = typer.Typer(
    help="Canaries: a version taking a share of production traffic, decided by live quality "
    "(start one with `promote NAME/V --to production --canary P`).",
    no_args_is_help=True,
)
app.add_typer(canary_app, name="canary")


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


@app.command()
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


def main() -> None:
    """Console entry point."""
    app(prog_name="adapter-registry")


# Kedro loads `cli` from <package>/cli.py as extra `kedro` project commands; we add none (the product's CLI is
# `adapter-registry`, above), but the name must exist or `kedro run` refuses to start.
cli = typer.main.get_group(typer.Typer(name="adapter-registry-kedro", add_completion=False))

if __name__ == "__main__":
    main()
