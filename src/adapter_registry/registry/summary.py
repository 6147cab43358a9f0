"""A compact summary of an adapter's versions, kept in its registered model's tags, so one search lists them all.

Over HTTP, MLflow's ``search_model_versions`` sends every tag of every version (about 45 each: lineage, sha256s,
metrics): listing 10,000 versions moves tens of megabytes and costs the server many seconds. A listing shows a few
of them (stage, base, method, task, key metric), so each adapter keeps those in its registered model's tags:
``ar.summary`` (a header: format, chunk count, highest version, hash of the text) and ``ar.summary.0`` ... (the
JSON text in pieces, MLflow keeps registered-model tag values up to 5,000 characters). One request to the auth
app's listing route (``registry.server_listing``) then returns every adapter's summary, aliases and newest version
together; on a server without the app, one paged ``search_registered_models`` (which also builds each model's
newest version with all its tags: ~2 s of server time at 500 adapters).

The store rewrites the summary under the adapter's writer lock whenever a version is registered or its stage tags
change (``AdapterStore``). A reader trusts it only when it checks out: the header's hash matches the text and the
highest version equals the newest version the registry reports for the model (``latest_versions``); otherwise it
reads that adapter's versions through MLflow's search (correct, slower). Versions changed outside
adapter-registry's writes (a tag edited in MLflow's UI) are not seen by the summary until the next write.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from adapter_registry.registry.entities import AdapterVersion, Tag

HEADER = "ar.summary"
CHUNK = 4800  # characters per tag (MLflow: 5,000 at most)
FORMAT = 1
# The tags a listing needs; every other tag is read with get_version.
KEPT = (Tag.BASE_ID, Tag.BASE_FINGERPRINT, Tag.METHOD, Tag.TASK)
ARCHIVED_KEYS = (Tag.ARCHIVED, Tag.STAGE)


def chunk_key(i: int) -> str:
    return f"{HEADER}.{i}"


def is_summary_key(key: str) -> bool:
    return key == HEADER or key.startswith(HEADER + ".")


def entry_of(version: AdapterVersion) -> dict[str, Any]:
    """What the summary keeps of one version (plain values; ``encode`` packs them)."""
    tags = version.tags
    return {
        "version": version.version,
        "created": int(version.created.timestamp() * 1000),
        "run_id": version.run_id,
        "source": version.source,
        "description": version.description,
        "tags": {k: tags[k] for k in KEPT if k in tags},
        "archived": tags.get(Tag.ARCHIVED) == "true" or tags.get(Tag.STAGE) == "archived",
        "metrics": {k[len(Tag.metric("")) :]: v for k, v in tags.items() if k.startswith(Tag.metric(""))},
    }


def encode(entries: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The registered-model tags (header and chunks) holding ``entries``."""
    words: dict[str, int] = {}

    def word(text: str) -> int:
        return words.setdefault(text, len(words))

    rows = []
    for e in sorted(entries, key=lambda e: int(e["version"])):
        source = str(e["source"])
        template = source.replace(e["run_id"], "{run}") if e["run_id"] else source
        rows.append([
            int(e["version"]), int(e["created"]), e["run_id"], word(template), e["description"],
            [[word(k), word(v)] for k, v in sorted(e["tags"].items())], 1 if e["archived"] else 0,
            [[word(k), v] for k, v in sorted(e["metrics"].items())],
        ])  # fmt: skip
    text = json.dumps({"w": list(words), "v": rows}, separators=(",", ":"))
    pieces = [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]
    header = {"format": FORMAT, "chunks": len(pieces), "top": max((r[0] for r in rows), default=0),
              "sha256": hashlib.sha256(text.encode()).hexdigest()[:32]}  # fmt: skip
    return {
        HEADER: json.dumps(header, separators=(",", ":")),
        **{chunk_key(i): p for i, p in enumerate(pieces)},
    }


def decode(tags: Mapping[str, str]) -> tuple[int, list[dict[str, Any]]] | None:
    """(highest version, entries) from a registered model's tags; None when there is no intact summary."""
    try:
        header = json.loads(tags[HEADER])
        if header.get("format") != FORMAT:
            return None
        text = "".join(tags[chunk_key(i)] for i in range(int(header["chunks"])))
        if hashlib.sha256(text.encode()).hexdigest()[:32] != header["sha256"]:
            return None
        data = json.loads(text)
        words = data["w"]
        entries = []
        for version, created, run_id, template, description, kept, archived, metrics in data["v"]:
            entries.append({
                "version": int(version), "created": int(created), "run_id": run_id,
                "source": words[template].replace("{run}", run_id), "description": description,
                "tags": {words[k]: words[v] for k, v in kept}, "archived": bool(archived),
                "metrics": {words[k]: v for k, v in metrics},
            })  # fmt: skip
        return int(header["top"]), entries
    except (KeyError, ValueError, TypeError, IndexError):
        return None


def versions_of(
    name: str, entries: Iterable[Mapping[str, Any]], aliases: Mapping[str, str]
) -> list[AdapterVersion]:
    """AdapterVersions (summary tags only) of ``name`` from its entries and its aliases (alias -> version)."""
    held: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        held.setdefault(int(version), []).append(alias)
    out = []
    prefix = Tag.metric("")
    for e in entries:
        tags = dict(e["tags"])
        if e["archived"]:
            tags[Tag.ARCHIVED] = "true"
        if e["run_id"]:
            tags[Tag.RUN_ID] = e["run_id"]
        metrics = e["metrics"]
        tags.update({prefix + k: v for k, v in metrics.items()})
        out.append(AdapterVersion.build(
            name=name, version=int(e["version"]), tags=tags, run_id=e["run_id"], source=e["source"],
            created_ms=e["created"], description=e["description"], aliases=held.get(int(e["version"]), ()),
            metrics=metrics,
        ))  # fmt: skip
    return out
