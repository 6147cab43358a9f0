"""``compat``: does an adapter fit a base (or, with ``--engine vllm``, can vLLM serve it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from adapter_registry.cli.common import JsonOpt, RefArg, _console, _emit, _error_line, _errors, _store
from adapter_registry.cli.vllm import _engine_report


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
