"""Lineage both ways: what one version was built from, and which versions a dataset or base model produced.

The lineage tags are written here (``lineage_tags``, from the plain facts the register node gathers in a
``LineageFacts``) and read back here: forward lineage from the version's tags and its audit trail
(``lineage_of``, ``datasets_of``, ``gates_of``), reverse lineage as a tag search (``ar.data.<split>.path/md5``,
``ar.base.id/fingerprint``) over every version. The renderers (mermaid, dot, a self-contained HTML/SVG picture)
are pure functions of a ``Lineage``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adapter_registry.registry.audit import AuditLog
from adapter_registry.registry.entities import AdapterVersion, DatasetRef, Lineage, RegistryError, Tag
from adapter_registry.registry.store import AdapterStore
from adapter_registry.vocabulary import SPLITS

if TYPE_CHECKING:
    from adapter_registry.recipes.schema import Gate

_DATA_TAG = re.compile(r"^ar\.data\.(?P<split>[\w\-]+)\.(?P<field>path|md5|commit)$")
MAX_TAG = 4900  # MLflow keeps model-version tag values up to 5000 characters
COMPOSED = "composition"  # Tag.METHOD of an adapter built from registered ones (compose: in its recipe)
COMPOSED_FAMILY = "reparameterisation"  # what peft's add_weighted_adapter builds: a LoRA adapter


# ------------------------------------------------------------------------------------------------ writing
@dataclass(frozen=True)
class LineageFacts:
    """Every lineage fact of one adapter version, as plain values (the register node gathers them)."""

    recipe_name: str
    recipe_hash: str  # sha256 of the resolved recipe
    task: str
    method: str | None  # the recipe's PEFT method type; None for a composed adapter (recorded as COMPOSED)
    method_family: str | None  # that method's family; None for a composed adapter (COMPOSED_FAMILY)
    peft_config: dict[str, Any]  # the saved adapter_config.json
    trainable_params: int
    total_params: int
    trainable_share: float  # trainable / total
    base_id: str
    base_revision: str
    base_fingerprint: str
    base_architecture: str
    base_shapes: dict[str, Any]
    git_commit: str
    git_dirty: bool
    validation: dict[str, Any]  # the data-validation report: success, statistics, failures
    data_versions: dict[str, dict[str, Any]]  # split -> path, md5, lock_commit (the DVC versions)
    gates: list[str]  # the recipe's promotion gates as strings, e.g. "accuracy >= 0.8"
    must_beat_base: bool
    warnings: list[str]  # recorded at training time
    libraries: dict[str, str]  # package -> version
    user_tags: dict[str, str]  # the recipe's registration.tags
    training: dict[str, Any] | None = None  # the recipe's training block (a trained adapter)
    compose: dict[str, Any] | None = None  # the recipe's compose block (a composed adapter)
    parents: list[dict[str, Any]] = field(default_factory=list)  # a composed adapter's: version, weight each
    merge: dict[str, Any] | None = None  # the merge report (max_abs_diff, diff_vs_base) when it merged
    merged_uri: str = ""  # where the merged weights were written


def _tag_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_TAG else json.dumps({"truncated": True, "head": text[: MAX_TAG - 40]})


def lineage_tags(facts: LineageFacts) -> dict[str, str]:
    """The model-version tags of ``facts``, keyed by ``registry.entities.Tag`` (read back by this module)."""
    tags = {
        Tag.RECIPE_NAME: facts.recipe_name,
        Tag.RECIPE_HASH: facts.recipe_hash,
        Tag.TASK: facts.task,
        Tag.METHOD: facts.method or COMPOSED,
        Tag.METHOD_FAMILY: facts.method_family or COMPOSED_FAMILY,
        Tag.PEFT_CONFIG: _tag_json(facts.peft_config),
        Tag.TRAINABLE_PARAMS: str(facts.trainable_params),
        Tag.TOTAL_PARAMS: str(facts.total_params),
        Tag.TRAINABLE_SHARE: f"{facts.trainable_share:.6g}",
        Tag.BASE_ID: facts.base_id,
        Tag.BASE_REVISION: facts.base_revision,
        Tag.BASE_FINGERPRINT: facts.base_fingerprint,
        Tag.BASE_ARCHITECTURE: facts.base_architecture,
        Tag.BASE_SHAPES: _tag_json(facts.base_shapes),
        Tag.GIT_COMMIT: facts.git_commit,
        Tag.GIT_DIRTY: str(facts.git_dirty).lower(),
        Tag.DATA_VALIDATION: _tag_json(
            {
                "success": facts.validation["success"],
                "statistics": facts.validation.get("statistics", {}),
                "failures": facts.validation.get("failures", [])[:5],
            }
        ),
        Tag.GATES: _tag_json(facts.gates),
        Tag.MUST_BEAT_BASE: str(facts.must_beat_base).lower(),
        Tag.WARNINGS: _tag_json(facts.warnings),
        **{Tag.library(name): version for name, version in facts.libraries.items()},
        **{f"ar.user.{k}": v for k, v in facts.user_tags.items()},
    }
    if facts.training is not None:
        tags[Tag.TRAINING] = _tag_json(facts.training)
    if facts.compose is not None:
        density = facts.compose.get("density")
        tags[Tag.PARENTS] = _tag_json(facts.parents)
        tags[Tag.COMPOSE] = _tag_json(facts.compose)
        tags[Tag.COMPOSE_TYPE] = facts.compose["combination_type"]
        tags[Tag.COMPOSE_DENSITY] = "" if density is None else f"{density:g}"
    for split, version in facts.data_versions.items():
        tags[Tag.data_path(split)] = version["path"]
        tags[Tag.data_md5(split)] = version["md5"]
        tags[Tag.data_commit(split)] = version.get("lock_commit") or ""
    if facts.merge is not None:
        tags[Tag.MERGED_URI] = facts.merged_uri
        tags[Tag.MERGE_PARITY] = f"{facts.merge['max_abs_diff']:.6g}"
        tags[Tag.MERGE_VS_BASE] = f"{facts.merge['diff_vs_base']:.6g}"
    return tags


# ------------------------------------------------------------------------------------------------ reading
def _parsed(value: str | None) -> Any:
    """A JSON tag's value (its text when it is not JSON; None when absent)."""
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def gates_of(version: AdapterVersion) -> list[tuple[str, Gate | ValueError]]:
    """The promotion gates recorded on ``version``, each as written with its ``Gate`` or why it does not parse."""
    from adapter_registry.recipes.schema import (
        Gate,
    )  # the recipe schema (0.2 s): only where gates are checked

    gates: list[tuple[str, Gate | ValueError]] = []
    for text in version.gates:
        try:
            gates.append((text, Gate.parse(text)))
        except ValueError as exc:
            gates.append((text, exc))
    return gates


def must_beat_base(version: AdapterVersion) -> bool:
    """Whether promoting ``version`` needs it to beat its base (true unless its recipe said otherwise)."""
    return version.tags.get(Tag.MUST_BEAT_BASE, "true").lower() != "false"


def datasets_of(version: AdapterVersion) -> tuple[DatasetRef, ...]:
    found: dict[str, dict[str, str]] = {}
    for key, value in version.tags.items():
        match = _DATA_TAG.match(key)
        if match:
            found.setdefault(match["split"], {})[match["field"]] = value
    order: dict[str, int] = {s: i for i, s in enumerate(SPLITS)}
    return tuple(
        DatasetRef(split, d.get("path", ""), d.get("md5", ""), d.get("commit", ""))
        for split, d in sorted(found.items(), key=lambda item: (order.get(item[0], 99), item[0]))
    )


def lineage_of(store: AdapterStore, ref: str) -> Lineage:
    """Everything recorded about where ``ref`` came from, plus its promotion history."""
    version = store.resolve(ref)
    tags = version.tags
    return Lineage(
        version=version,
        datasets=datasets_of(version),
        data_validation=_parsed(tags.get(Tag.DATA_VALIDATION)),
        code_commit=tags.get(Tag.GIT_COMMIT, ""),
        code_dirty=tags.get(Tag.GIT_DIRTY, ""),
        recipe={"name": tags.get(Tag.RECIPE_NAME, ""), "hash": tags.get(Tag.RECIPE_HASH, "")},
        base={
            "id": tags.get(Tag.BASE_ID, ""),
            "revision": tags.get(Tag.BASE_REVISION, ""),
            "fingerprint": tags.get(Tag.BASE_FINGERPRINT, ""),
            "architecture": tags.get(Tag.BASE_ARCHITECTURE, ""),
            "shapes": _parsed(tags.get(Tag.BASE_SHAPES)),
        },
        peft_config=_parsed(tags.get(Tag.PEFT_CONFIG)),
        training=_parsed(tags.get(Tag.TRAINING)),
        parents=_parsed(tags.get(Tag.PARENTS)),
        history=tuple(e for e in AuditLog(store).read(version.name).events if e.version == version.version
                      or e.replaced_version == version.version),
    )  # fmt: skip


def versions_from_dataset(store: AdapterStore, dataset: str) -> list[AdapterVersion]:
    """Every version trained or scored on ``PATH`` or ``PATH@MD5`` (any split)."""
    path, _, md5 = dataset.partition("@")
    if not path:
        raise RegistryError("INVALID_INPUT", f"dataset {dataset!r} is not PATH or PATH@MD5")
    found: dict[tuple[str, int], AdapterVersion] = {}
    for split in SPLITS:
        filters = {Tag.data_path(split): path, **({Tag.data_md5(split): md5} if md5 else {})}
        for version in store.list_versions(tag_equals=filters, summary=True):
            found[(version.name, version.version)] = version
    return sorted(found.values(), key=lambda v: (v.name, -v.version))


def versions_from_md5(store: AdapterStore, md5: str) -> list[AdapterVersion]:
    """Every version whose data (any split) has DVC md5 ``md5``, whatever its path."""
    found: dict[tuple[str, int], AdapterVersion] = {}
    for split in SPLITS:
        for version in store.list_versions(tag_equals={Tag.data_md5(split): md5}, summary=True):
            found[(version.name, version.version)] = version
    return sorted(found.values(), key=lambda v: (v.name, -v.version))


def versions_from_base(store: AdapterStore, base: str) -> list[AdapterVersion]:
    """Every version built on base ``base`` (its id or its fingerprint)."""
    return store.list_versions(base_model=base, summary=True)


# ------------------------------------------------------------------------------------------------ graphs
def _edges(lineage: Lineage) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Nodes (id -> label) and edges (from, to, label) of the lineage graph."""
    v = lineage.version
    nodes = {"version": f"{v.ref}\\nstage: {v.stage}"}
    edges = []
    for i, d in enumerate(lineage.datasets):
        nodes[f"data{i}"] = f"{d.split}: {d.path}\\nmd5 {d.md5[:12]}\\ngit {d.commit[:8]}"
        edges.append((f"data{i}", "run", d.split))
    nodes["run"] = f"MLflow run {v.run_id[:12]}"
    nodes["code"] = f"code {lineage.code_commit[:8]}{' (dirty)' if lineage.code_dirty == 'true' else ''}"
    nodes["recipe"] = f"recipe {lineage.recipe.get('name', '')}\\n{lineage.recipe.get('hash', '')[:12]}"
    fingerprint = str(lineage.base.get("fingerprint") or "")
    nodes["base"] = f"base {lineage.base.get('id', '')}\\n{fingerprint[:19]}"
    validation = lineage.data_validation
    ok = validation.get("success") if isinstance(validation, dict) else None
    nodes["validation"] = f"data validation: {'passed' if ok else 'failed' if ok is False else 'unknown'}"
    edges += [
        ("validation", "run", "gate"),
        ("code", "run", "code"),
        ("recipe", "run", "config"),
        ("base", "run", "base"),
        ("run", "version", "registered"),
    ]
    for i, parent in enumerate(lineage.parents if isinstance(lineage.parents, list) else []):
        nodes[f"parent{i}"] = f"parent {parent.get('version', '?')}\\nweight {parent.get('weight', '?')}"
        edges.append((f"parent{i}", "run", "composed"))
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


def to_html(lineage: Lineage) -> str:
    """A self-contained HTML page with the graph drawn as inline SVG (no JavaScript, works offline)."""
    import html

    nodes, edges = _edges(lineage)
    depth: dict[str, int] = dict.fromkeys(nodes, 0)
    for _ in nodes:  # longest-path layering; the graph is a small DAG
        for src, dst, _label in edges:
            depth[dst] = max(depth[dst], depth[src] + 1)
    columns: dict[int, list[str]] = {}
    for node in nodes:
        columns.setdefault(depth[node], []).append(node)
    width, height, gap_x, gap_y = 230, 64, 60, 24
    place = {
        node: (20 + col * (width + gap_x), 20 + row * (height + gap_y))
        for col, members in columns.items()
        for row, node in enumerate(members)
    }
    svg_w = 40 + len(columns) * (width + gap_x)
    svg_h = 40 + max(len(m) for m in columns.values()) * (height + gap_y)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{svg_w}" height="{svg_h}" font-family="sans-serif">',
             '<defs><marker id="a" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
             'orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>']  # fmt: skip
    for src, dst, label in edges:
        (x1, y1), (x2, y2) = place[src], place[dst]
        sx, sy, ex, ey = x1 + width, y1 + height / 2, x2, y2 + height / 2
        parts.append(f'<line x1="{sx}" y1="{sy}" x2="{ex}" y2="{ey}" stroke="#555" marker-end="url(#a)"/>')
        if label:
            parts.append(f'<text x="{(sx + ex) / 2}" y="{(sy + ey) / 2 - 4}" font-size="10" '
                         f'text-anchor="middle">{html.escape(label)}</text>')  # fmt: skip
    for node, label in nodes.items():
        x, y = place[node]
        fill = "#dbeafe" if node == "version" else "#f3f4f6"
        parts.append(
            f'<rect x="{x}" y="{y}" width="{width}" height="{height}" rx="6" fill="{fill}" stroke="#333"/>'
        )
        for i, line in enumerate(label.split("\\n")[:3]):
            parts.append(f'<text x="{x + 8}" y="{y + 18 + i * 16}" font-size="12">{html.escape(line)}</text>')
    parts.append("</svg>")
    title = html.escape(f"Lineage of {lineage.version.ref}")
    details = html.escape(json.dumps(lineage.to_dict(), indent=2, default=str))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
        f"<h1>{title}</h1>{''.join(parts)}<h2>Recorded facts</h2><pre>{details}</pre></body></html>\n"
    )
