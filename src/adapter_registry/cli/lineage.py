"""``lineage``: where a version came from (a tree, mermaid, dot or html), or every version built from a dataset, an
md5 or a base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from adapter_registry.cli.common import JsonOpt, _console, _emit, _errors, _store
from adapter_registry.cli.tables import _versions_table


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
    from adapter_registry.registry import lineage_render as draw
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
        text = {"mermaid": draw.to_mermaid, "dot": draw.to_dot, "html": draw.to_html}[fmt](graph)
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
