"""A ``Lineage`` drawn: the graph (``to_mermaid``, ``to_dot``) and a self-contained HTML page with the graph as
inline SVG and every recorded fact in a table (``to_html``, ``facts_table``). Pure functions of a ``Lineage``
(``registry.lineage.lineage_of`` reads one); ``adapter-registry lineage --format`` prints them."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from adapter_registry.registry.entities import Lineage


def _edges(lineage: Lineage) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Nodes (id -> label, lines split by a literal ``\n``) and edges (from, to, label) of the lineage graph."""
    v = lineage.version
    nodes = {"version": f"version {v.ref}\\nstage: {v.stage}"}
    edges = []
    for i, d in enumerate(lineage.datasets):
        recorded = f"dvc.lock at git {d.commit[:8]}" if d.commit else "not in a dvc.lock"
        nodes[f"data{i}"] = f"{d.split} split: {d.path}\\nmd5 {d.md5[:12]}\\n{recorded}"
        edges.append((f"data{i}", "run", d.split))
    nodes["run"] = f"MLflow run\\n{v.run_id[:12]}"
    nodes["code"] = f"code: git {lineage.code_commit[:8]}{' (dirty)' if lineage.code_dirty == 'true' else ''}"
    nodes["recipe"] = (
        f"recipe {lineage.recipe.get('name', '')}\\nsha256 {lineage.recipe.get('hash', '')[:12]}"
    )
    fingerprint = str(lineage.base.get("fingerprint") or "")
    hub = str(lineage.base.get("hub_id") or "")
    nodes["base"] = (
        f"base {lineage.base.get('id', '')}" + (f"\\n= {hub}" if hub else "") + f"\\n{fingerprint[:19]}"
    )
    validation = lineage.data_validation
    ok = validation.get("success") if isinstance(validation, dict) else None
    verdict = "passed" if ok else "failed" if ok is False else "unknown"
    nodes["validation"] = f"data-validation report\\n(GX + dvc.lock): {verdict}"
    edges += [
        ("validation", "run", "gate"),
        ("code", "run", "code"),
        ("recipe", "run", "config"),
        ("base", "run", "base"),
        ("run", "version", "registered"),
    ]
    for i, parent in enumerate(lineage.parents if isinstance(lineage.parents, list) else []):
        role = f"weight {parent['weight']}" if "weight" in parent else parent.get("role", "expert")
        nodes[f"parent{i}"] = f"parent {parent.get('version', '?')}\\n{role}"
        edges.append((f"parent{i}", "run", "composed" if "weight" in parent else "routes to"))
    for i, e in enumerate(lineage.history):
        nodes[f"event{i}"] = f"{e.action} → {e.to_stage}\\n{e.when:%Y-%m-%d %H:%M} by {e.who}"
        edges.append(("version" if i == 0 else f"event{i - 1}", f"event{i}", "forced" if e.forced else ""))
    return nodes, edges


def to_mermaid(lineage: Lineage) -> str:
    nodes, edges = _edges(lineage)
    lines = ["flowchart LR"]
    for node, label in nodes.items():
        lines.append(f'    {node}["{label.replace(chr(34), "#quot;").replace(chr(92) + "n", "<br/>")}"]')
    for src, dst, label in edges:
        lines.append(f"    {src} -->|{label}| {dst}" if label else f"    {src} --> {dst}")
    return "\n".join(lines) + "\n"


def to_dot(lineage: Lineage) -> str:
    nodes, edges = _edges(lineage)
    lines = ["digraph lineage {", "    rankdir=LR;", '    node [shape=box, fontname="Helvetica"];']
    for node, label in nodes.items():
        lines.append(f'    {node} [label="{label.replace(chr(34), chr(39))}"];')
    for src, dst, label in edges:
        lines.append(f'    {src} -> {dst} [label="{label}"];')
    return "\n".join(lines) + "\n}\n"


# the HTML picture: boxes in columns (sources -> run -> version -> history), sizes in pixels
_CHAR_W, _LINE_H, _PAD, _GAP_X, _GAP_Y, _MARGIN = 7.2, 16, 10, 90, 18, 20


@dataclass
class _Box:
    x: float
    y: float
    w: float
    h: float
    lines: list[str]


def _layout(nodes: dict[str, str], edges: list[tuple[str, str, str]]) -> dict[str, _Box]:
    """Columns by longest path (the history stacked in one column), boxes sized to their text, each column
    centred on the tallest; the run box is tall enough to take every incoming arrow at its own height."""
    depth: dict[str, int] = dict.fromkeys(nodes, 0)
    for _ in nodes:  # longest-path layering; the graph is a small DAG
        for src, dst, _label in edges:
            if not dst.startswith("event"):
                depth[dst] = max(depth[dst], depth[src] + 1)
    for node in nodes:
        if node.startswith("event"):
            depth[node] = depth["version"] + 1
    incoming = {node: sum(1 for _, dst, _l in edges if dst == node) for node in nodes}
    columns: dict[int, list[str]] = {}
    for node in nodes:
        columns.setdefault(depth[node], []).append(node)
    boxes: dict[str, _Box] = {}
    heights: dict[int, float] = {}
    x = float(_MARGIN)
    for col in sorted(columns):
        lines = {n: nodes[n].split("\\n") for n in columns[col]}
        width = max(_CHAR_W * len(line) for n in columns[col] for line in lines[n]) + 2 * _PAD
        y = 0.0
        for node in columns[col]:
            h = max(len(lines[node]) * _LINE_H + 2 * _PAD, incoming[node] * 22 + 2 * _PAD)
            boxes[node] = _Box(x, y, width, h, lines[node])
            y += h + _GAP_Y
        heights[col] = y - _GAP_Y
        x += width + _GAP_X
    tallest = max(heights.values())
    for col, members in columns.items():
        shift = _MARGIN + 30 + (tallest - heights[col]) / 2
        for node in members:
            boxes[node].y += shift
    return boxes


def _svg(nodes: dict[str, str], edges: list[tuple[str, str, str]]) -> str:
    """The lineage graph as inline SVG: arrows end at their own point on the target, labels sit at their source."""
    boxes = _layout(nodes, edges)
    width = max(b.x + b.w for b in boxes.values()) + _MARGIN
    height = max(b.y + b.h for b in boxes.values()) + _MARGIN
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        'font-family="Helvetica, Arial, sans-serif" font-size="12">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
    ]
    ports: dict[str, list[tuple[str, str]]] = {}
    for src, dst, label in edges:
        ports.setdefault(dst, []).append((src, label))
    for dst, sources in ports.items():
        target = boxes[dst]
        side = [(src, label) for src, label in sources if boxes[src].x < target.x]
        side.sort(key=lambda item: boxes[item[0]].y)
        for i, (src, label) in enumerate(side):
            source = boxes[src]
            sx, sy = source.x + source.w, source.y + source.h / 2
            ex, ey = target.x, target.y + (i + 1) * target.h / (len(side) + 1)
            mid = (sx + ex) / 2
            parts.append(f'<path d="M{sx:.1f},{sy:.1f} C{mid:.1f},{sy:.1f} {mid:.1f},{ey:.1f} {ex:.1f},{ey:.1f}" '
                         'fill="none" stroke="#555" marker-end="url(#arrow)"/>')  # fmt: skip
            if label:
                parts.append(
                    f'<text x="{sx + 6:.1f}" y="{sy - 5:.1f}" fill="#444">{html.escape(label)}</text>'
                )
        for src, label in sources:
            source = boxes[src]
            if source.x >= target.x:  # the history: one event under the other
                cx = target.x + target.w / 2
                sy, ey = source.y + source.h, target.y
                parts.append(f'<line x1="{cx:.1f}" y1="{sy:.1f}" x2="{cx:.1f}" y2="{ey:.1f}" stroke="#555" '
                             'marker-end="url(#arrow)"/>')  # fmt: skip
                if label:
                    parts.append(
                        f'<text x="{cx + 6:.1f}" y="{(sy + ey) / 2 + 4:.1f}" fill="#444">{html.escape(label)}</text>'
                    )
    fills = {"version": "#dbeafe", "run": "#fef3c7"}
    for node, box in boxes.items():
        fill = fills.get(node, "#ecfdf5" if node.startswith("event") else "#f3f4f6")
        parts.append(f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.w:.1f}" height="{box.h:.1f}" rx="6" '
                     f'fill="{fill}" stroke="#333"/>')  # fmt: skip
        top = box.y + box.h / 2 - (len(box.lines) - 1) * _LINE_H / 2 + 4
        for i, line in enumerate(box.lines):
            weight = ' font-weight="bold"' if i == 0 else ""
            parts.append(
                f'<text x="{box.x + _PAD:.1f}" y="{top + i * _LINE_H:.1f}"{weight}>{html.escape(line)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


PEFT_FACTS = ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "use_dora", "target_modules",
              "modules_to_save", "base_model_name_or_path", "revision")  # fmt: skip


def _fact(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def facts_table(lineage: Lineage) -> list[tuple[str, str]]:
    """Every recorded fact of the lineage as (what, value) rows, in reading order (the HTML page's table)."""
    v = lineage.version
    rows = [("version", v.ref), ("stage", v.stage), ("MLflow run", v.run_id),
            ("recipe", f"{lineage.recipe.get('name', '')} (sha256 {lineage.recipe.get('hash', '')})"),
            ("code", f"git {lineage.code_commit}" + (" (dirty)" if lineage.code_dirty == "true" else ""))]  # fmt: skip
    base = lineage.base
    rows.append(
        (
            "base",
            " · ".join(str(base[k]) for k in ("id", "hub_id", "revision", "architecture") if base.get(k)),
        )
    )
    rows.append(("base fingerprint", str(base.get("fingerprint") or "")))
    if base.get("path"):
        rows.append(("base folder (when trained)", str(base["path"])))
    for d in lineage.datasets:
        rows.append(
            (
                f"{d.split} split",
                f"{d.path} · md5 {d.md5}" + (f" · dvc.lock at git {d.commit}" if d.commit else ""),
            )
        )
    validation = lineage.data_validation if isinstance(lineage.data_validation, dict) else {}
    stats = validation.get("statistics") or {}
    success = validation.get("success")
    verdict = "passed" if success is True else "failed" if success is False else "not recorded"
    counted = f", {stats['expectations']} expectations" if "expectations" in stats else ""
    rows.append(("data-validation report", f"{verdict}{counted}"))
    for failure in validation.get("failures") or []:
        rows.append(
            (
                "  failed expectation",
                str(failure.get("detail", failure)) if isinstance(failure, dict) else str(failure),
            )
        )
    facts = (("adapter config", lineage.peft_config, PEFT_FACTS), ("training", lineage.training, ()))
    for title, value, keys in facts:
        if isinstance(value, dict):
            shown = {k: value[k] for k in keys or sorted(value) if value.get(k) not in (None, "", [], {})}
            rows.append((title, ", ".join(f"{k}={_fact(val)}" for k, val in shown.items())))
    for parent in lineage.parents if isinstance(lineage.parents, list) else []:
        role = f"× {parent['weight']}" if "weight" in parent else f"({parent.get('role', 'expert')})"
        rows.append(("parent", f"{parent.get('version')} {role}"))
    metrics = v.metrics
    for name in sorted(m for m in metrics if not m.endswith(("_ci_low", "_ci_high"))):
        low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
        interval = f" [{low:.4f}, {high:.4f}]" if low is not None and high is not None else ""
        rows.append((f"metric {name}", f"{metrics[name]:.4f}{interval}"))
    for e in lineage.history:
        rows.append((f"event #{e.seq}", f"{e.when:%Y-%m-%d %H:%M} UTC {e.who}: {e.action} v{e.version} "
                     f"{e.from_stage} → {e.to_stage}" + (f" ({e.reason})" if e.reason else "")))  # fmt: skip
    return rows


def to_html(lineage: Lineage) -> str:
    """A self-contained HTML page: the graph drawn as inline SVG (no JavaScript, nothing fetched: works offline),
    then every recorded fact in a table."""
    nodes, edges = _edges(lineage)
    title = html.escape(f"Lineage of {lineage.version.ref}")
    table = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts_table(lineage)
    )
    style = ("body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#111}svg{max-width:100%;height:auto}"
             "table{border-collapse:collapse;margin-top:8px;max-width:1400px}th,td{border:1px solid #ddd;padding:4px 8px;"
             "text-align:left;vertical-align:top;font-size:13px}th{background:#f9fafb;white-space:nowrap}"
             "td{font-family:ui-monospace,Menlo,monospace;overflow-wrap:anywhere}")  # fmt: skip
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head>"
        f"<body><h1>{title}</h1>{_svg(nodes, edges)}<h2>Recorded facts</h2><table>{table}</table></body></html>\n"
    )
