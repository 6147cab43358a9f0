"""The tables the commands print: versions (drawn directly past a few hundred rows) and stage changes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import typer

from adapter_registry.cli.common import _console

if TYPE_CHECKING:
    from adapter_registry.registry.entities import AdapterVersion, StageChange
    from adapter_registry.registry.stages import StageCheck


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
            bar + bar.join(f" {v}{' ' * (w - width(v))} " for v, w in zip(values, widths, strict=True)) + bar
        )

    excess = max(total - width(title), 0)
    out = [" " * (excess // 2) + title + " " * (excess - excess // 2), line("┏", "━", "┳", "┓"), row(columns, "┃"),
           line("┡", "━", "╇", "┩"), *(row(r, "│") for r in cells), line("└", "─", "┴", "┘")]  # fmt: skip
    return "\n".join(out)


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
