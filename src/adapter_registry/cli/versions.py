"""What is registered, read: ``list``, ``show`` (with each stage holder checked against the audit trail) and
``pull`` (a version's files, sha256-checked)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from adapter_registry.cli.common import JsonOpt, RefArg, _console, _emit, _errors, _store
from adapter_registry.cli.tables import _versions_table

if TYPE_CHECKING:
    from concurrent.futures import Future

    from adapter_registry.registry.entities import AdapterVersion
    from adapter_registry.registry.stages import StageCheck
    from adapter_registry.registry.store import AdapterStore


def _stage_checks(
    store: AdapterStore, versions: list[AdapterVersion], every: Future[Any] | None = None
) -> dict[tuple[str, str], StageCheck]:
    """(name, stage) -> the check of every staging/production holder among ``versions`` (one audit search;
    ``every``: that search, started before)."""
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
    if every is not None:
        trails = every.result()
    else:
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
    from concurrent.futures import ThreadPoolExecutor

    from adapter_registry.registry.audit import AuditLog

    with _errors():
        store = _store()
        with ThreadPoolExecutor(1) as pool:  # on a server, every trail is read while the versions are
            every = pool.submit(AuditLog(store).read_all) if store.tracking_uri.startswith("http") else None
            versions = store.list_versions(stage=stage, base_model=base_model, method=method, summary=True)
            checks = _stage_checks(store, versions, every)
    _emit(
        as_json,
        [_with_attestation(v, checks) for v in versions] if as_json else None,
        lambda: _versions_table(versions, f"{len(versions)} versions", checks),
    )


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
