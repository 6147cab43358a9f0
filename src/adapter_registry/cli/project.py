"""The project's side: ``recipes`` (the recipes of pipelines/, a CI matrix) and ``reproduce`` (a version re-trained
from its recorded commit and data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from adapter_registry.cli.common import JsonOpt, RefArg, _console, _emit, _error_line, _errors, _store


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
