"""Finding versions: equality filters as data, run through MLflow's search or a read-only sqlite fast path.

A :class:`VersionFilter` is a version name and tag values that must all match. ``AdapterStore.list_versions``
builds them from its options and runs each through :func:`search_mlflow` (any tracking store: one
``search_model_versions`` filter string, paginated) or, on a sqlite store, :func:`search_sqlite` (three plain SQL
queries over MLflow's own registry tables, never writing). Both return the same ``AdapterVersion`` entities
(tested in tests/registry/test_store.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapter_registry.registry.entities import AdapterVersion, Tag

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


def search_mlflow(client: Any, where: VersionFilter) -> list[AdapterVersion]:
    """Every version matching ``where`` through MLflow's own search (any tracking store), all pages.

    MLflow's version search leaves ``aliases`` empty, and a stage is an alias: they are read from the registered
    models (one paged search) and given to each version.
    """
    found = []
    token = None
    while True:
        page = client.search_model_versions(where.mlflow_filter(), max_results=10_000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            break
    aliases: dict[tuple[str, int], list[str]] = {}
    names = {mv.name for mv in found}
    token = None
    while names:
        models = client.search_registered_models(max_results=1000, page_token=token)
        for model in models:
            if model.name in names:
                for alias, version in (model.aliases or {}).items():
                    aliases.setdefault((model.name, int(version)), []).append(alias)
        token = models.token
        if not token:
            break
    return [
        AdapterVersion.from_model_version(mv, aliases.get((mv.name, int(mv.version)), ())) for mv in found
    ]


def search_sqlite(engine: Any, where: VersionFilter, summary: bool = False) -> list[AdapterVersion]:
    """The same search as three read-only SQL queries over MLflow's registry tables on a sqlite store.

    MLflow's ``search_model_versions`` builds an ORM object per tag and takes ~15 s to list 10,000 versions with
    ~45 tags each; this reads the same rows (model_versions, model_version_tags, registered_model_aliases;
    default workspace) with plain SQL and never writes. ``summary=True`` loads only :data:`SUMMARY_TAGS` and the
    metrics.
    """
    import sqlalchemy as sa

    live = "current_stage != 'Deleted_Internal'"
    with engine.connect() as conn:
        matched: set[tuple[str, int]] | None = None
        for key, value in where.pairs():  # each condition is one indexed look-up; intersect in Python
            query = (
                sa.text("SELECT name, version FROM model_versions WHERE name = :v")
                if key == "name"
                else sa.text("SELECT name, version FROM model_version_tags WHERE key = :k AND value = :v")
            )
            found = {(n, int(v)) for n, v in conn.execute(query, {"k": key, "v": value})}
            matched = found if matched is None else matched & found
        names = sorted({n for n, _ in matched}) if matched is not None else None
        by_name = " AND name IN :names" if names is not None else ""
        keys = ""
        if summary:
            keys = f" AND (key IN ({', '.join(repr(k) for k in SUMMARY_TAGS)}) OR key LIKE 'ar.metric.%')"

        def select(sql: str) -> Any:
            statement = sa.text(sql)
            if names is not None:
                statement = statement.bindparams(sa.bindparam("names", expanding=True))
            return conn.execute(statement, {"names": names} if names is not None else {})

        rows = [
            r
            for r in select(
                "SELECT name, version, creation_time, source, run_id, description FROM model_versions "
                f"WHERE {live}{by_name}"
            )
            if matched is None or (r[0], int(r[1])) in matched
        ]
        tags: dict[tuple[str, int], dict[str, str]] = {(r[0], int(r[1])): {} for r in rows}
        for name, version, key, value in select(
            f"SELECT name, version, key, value FROM model_version_tags WHERE 1 = 1{by_name}{keys}"
        ):
            bucket = tags.get((name, int(version)))
            if bucket is not None:
                bucket[key] = value
        aliases: dict[tuple[str, int], list[str]] = {}
        for name, alias, version in conn.execute(
            sa.text("SELECT name, alias, version FROM registered_model_aliases")
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
