"""Finding versions: equality filters as data, run through MLflow's search, a sqlite fast path or the summaries.

A :class:`VersionFilter` is a version name and tag values that must all match. ``AdapterStore.list_versions``
builds them from its options and runs each through :func:`search_mlflow` (any tracking store: one
``search_model_versions`` filter string, paginated), on a sqlite store :func:`search_sqlite` (plain SQL queries
over MLflow's own registry tables with ``sqlite3``, never writing), or, for a listing on a server,
:func:`search_summaries` (every adapter's version summary and aliases, ``registry.summary``: one request to the
auth app's listing route, ``registry.server_listing``, else one paged ``search_registered_models``). All return the same ``AdapterVersion`` entities (tests/registry/test_store.py,
tests/registry/test_backends.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapter_registry.registry import summary
from adapter_registry.registry.entities import LOCK_MODEL, AdapterVersion, Tag

# The tags a listing shows (stage, base, method, task, metrics): ``summary=True`` loads only these on sqlite.
SUMMARY_TAGS = (Tag.ARCHIVED, Tag.STAGE, Tag.BASE_ID, Tag.BASE_FINGERPRINT, Tag.METHOD, Tag.TASK, Tag.RUN_ID)


@dataclass(frozen=True)
class VersionFilter:
    """Versions whose name (when given) and every given tag equal these values."""

    name: str | None = None
    tags: tuple[tuple[str, str], ...] = ()

    def with_tag(self, key: str, value: str) -> VersionFilter:
        return VersionFilter(self.name, (*self.tags, (key, value)))

    def pairs(self) -> list[tuple[str, str]]:
        """(``"name"`` or a tag key, value) for every condition."""
        return ([("name", self.name)] if self.name else []) + list(self.tags)

    def mlflow_filter(self) -> str | None:
        """The same conditions as an MLflow ``search_model_versions`` filter string (None: everything)."""
        clauses = [f"name = '{quote(self.name)}'"] if self.name else []
        clauses += [f"tags.`{key}` = '{quote(value)}'" for key, value in self.tags]
        return " AND ".join(clauses) or None


def quote(value: str) -> str:
    """A value inside single quotes of an MLflow filter string."""
    return str(value).replace("'", "\\'")


FEW = 20  # adapters whose aliases are looked up one by one rather than through a search of every model


def search_mlflow(client: Any, where: VersionFilter, aliases: bool = True) -> list[AdapterVersion]:
    """Every version matching ``where`` through MLflow's own search (any tracking store), all pages.

    MLflow's version search leaves ``aliases`` empty, and a stage is an alias: they are read from the registered
    models (a look-up per adapter found when they are few, else one paged search) and given to each version.
    """
    found = []
    token = None
    while True:
        page = client.search_model_versions(where.mlflow_filter(), max_results=10_000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            break
    held: dict[tuple[str, int], list[str]] = {}
    names = {mv.name for mv in found}
    # a few adapters: one look-up each; many: one paged search of every registered model (2 s at 500 adapters)
    models = [client.get_registered_model(n) for n in sorted(names)] if aliases and len(names) <= FEW else []
    token = None
    while names and aliases and not models:
        page = client.search_registered_models(max_results=1000, page_token=token)
        models.extend(m for m in page if m.name in names)
        token = page.token
        if not token:
            break
    for model in models:
        for alias, version in (model.aliases or {}).items():
            held.setdefault((model.name, int(version)), []).append(alias)
    return [AdapterVersion.from_model_version(mv, held.get((mv.name, int(mv.version)), ())) for mv in found]


# Filters a summary answers: the version's name and the tags it keeps.
def summary_answers(where: VersionFilter) -> bool:
    return all(key in summary.KEPT for key, _ in where.tags)


def search_summaries(client: Any, where: VersionFilter, fallback: Any = None) -> list[AdapterVersion]:
    """The versions matching ``where`` (``summary_answers``) from the adapters' summaries: the server's listing
    route where it has one (``registry.server_listing``), else one paged search of registered models (or one
    look-up by name). An adapter whose summary is missing or behind its newest version is
    read in full instead: ``fallback(where)`` (the store's search), else MLflow's search through ``client``."""
    listing = getattr(client, "summaries", None)  # the server's listing route (registry.server_listing)
    found = listing(where.name) if listing is not None else None
    if found is not None:
        models = found
    elif where.name:
        from adapter_registry.registry.errors import error_code

        try:
            models = [client.get_registered_model(where.name)]
        except Exception as exc:
            if error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise
            return []
    else:
        models, token = [], None
        while True:
            page = client.search_registered_models(max_results=1000, page_token=token)
            models.extend(page)
            token = page.token
            if not token:
                break
    wanted = dict(where.tags)
    out: list[AdapterVersion] = []
    for model in models:
        if model.name == LOCK_MODEL:
            continue
        decoded = summary.decode(model.tags or {})
        newest = max((int(v.version) for v in model.latest_versions or ()), default=None)
        if decoded is None or (newest is not None and decoded[0] != newest):
            one = VersionFilter(model.name, where.tags)
            versions = fallback(one) if fallback is not None else search_mlflow(client, one)
        else:  # the entries that match first: a version is built only when listed
            entries = [e for e in decoded[1] if all(e["tags"].get(k) == val for k, val in wanted.items())]
            versions = summary.versions_of(model.name, entries, model.aliases or {})
        out.extend(v for v in versions if all(v.tags.get(k) == val for k, val in wanted.items()))
    return out


def search_sqlite(conn: Any, where: VersionFilter, summary_only: bool = False) -> list[AdapterVersion]:
    """The same search as a few read-only SQL queries over MLflow's registry tables on a sqlite store.

    MLflow's ``search_model_versions`` builds an ORM object per tag and takes ~15 s to list 10,000 versions with
    ~45 tags each; this reads the same rows (model_versions, model_version_tags, registered_model_aliases;
    default workspace) with ``sqlite3`` and never writes. ``summary_only=True`` loads only :data:`SUMMARY_TAGS`
    and the metrics.
    """
    live = "workspace = 'default' AND current_stage != 'Deleted_Internal'"
    matched: set[tuple[str, int]] | None = None
    for key, value in where.pairs():  # each condition is one indexed look-up; intersect in Python
        query = (
            "SELECT name, version FROM model_versions WHERE workspace = 'default' AND name = ?"
            if key == "name"
            else "SELECT name, version FROM model_version_tags WHERE workspace = 'default' AND key = ? AND value = ?"
        )
        params = (value,) if key == "name" else (key, value)
        found = {(n, int(v)) for n, v in conn.execute(query, params)}
        matched = found if matched is None else matched & found
    names = sorted({n for n, _ in matched}) if matched is not None else None
    by_name = f" AND name IN ({', '.join('?' * len(names))})" if names is not None else ""
    keys = ""
    if summary_only:
        keys = f" AND (key IN ({', '.join(repr(k) for k in SUMMARY_TAGS)}) OR key LIKE 'ar.metric.%')"
    rows = [
        r
        for r in conn.execute(
            "SELECT name, version, creation_time, source, run_id, description FROM model_versions "
            f"WHERE {live}{by_name}",
            names or (),
        )
        if matched is None or (r[0], int(r[1])) in matched
    ]
    tags: dict[tuple[str, int], dict[str, str]] = {(r[0], int(r[1])): {} for r in rows}
    for name, version, key, value in conn.execute(
        f"SELECT name, version, key, value FROM model_version_tags WHERE workspace = 'default'{by_name}{keys}",
        names or (),
    ):
        bucket = tags.get((name, int(version)))
        if bucket is not None:
            bucket[key] = value
    aliases: dict[tuple[str, int], list[str]] = {}
    for name, alias, version in conn.execute(
        "SELECT name, alias, version FROM registered_model_aliases WHERE workspace = 'default'"
    ):
        aliases.setdefault((name, int(version)), []).append(alias)
    out = []
    for name, version, created, source, run_id, description in rows:
        ident = (name, int(version))
        out.append(
            AdapterVersion.build(
                name=name,
                version=int(version),
                tags=tags[ident],
                run_id=run_id or "",
                source=source or "",
                created_ms=created,
                description=description or "",
                aliases=aliases.get(ident, ()),
            )
        )
    return out
