"""vLLM as the serving engine: ``export`` (the folder vLLM loads), ``vllm-sync`` (the stage holders loaded on
running vLLM servers) and the engine's rules as ``compat --engine vllm`` checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from adapter_registry.cli.common import JsonOpt, RefArg, _console, _emit, _errors, _store

if TYPE_CHECKING:
    from adapter_registry.registry.entities import AdapterVersion


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
