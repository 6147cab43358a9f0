"""The store's calls on a sqlite registry with the standard library's ``sqlite3``: no mlflow or SQLAlchemy import.

MLflow keeps a local registry in its own SQL tables (``model_versions``, ``model_version_tags``,
``registered_model_aliases``, ``runs``, ``tags`` ...). Going through ``MlflowClient`` costs 2 to 4 s per process
before the first query (importing mlflow, building its SQLAlchemy store, checking migrations), which is what kept a
whole ``adapter-registry list`` or ``promote`` process above a second. This client runs the same reads and the few
writes a promotion makes (aliases, tags, an audit run, a writer ticket) as plain SQL on MLflow's tables, with the
meaning MLflow's ``SqlAlchemyStore`` gives them (read there: ``store/model_registry/sqlalchemy_store.py`` and
``store/tracking/sqlalchemy_store.py``), in the ``default`` workspace.

It is only used on a schema it was written for: :data:`KNOWN_REVISIONS` lists MLflow's alembic revisions
(``alembic_version``) whose tables it knows; on any other, :func:`open_registry` returns None with a notice and
the store uses MLflow's client (slower, always right). Registration, experiment creation and artifact uploads
always go through MLflow's client.
"""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from adapter_registry.registry.records import (
    BackendError,
    ExperimentRecord,
    ModelRecord,
    Page,
    RunDataRecord,
    RunInfoRecord,
    RunRecord,
    VersionRecord,
)

# MLflow 3.17.2's head revision; tests/registry/test_backends.py checks that it is the installed MLflow's head.
KNOWN_REVISIONS = ("dc11669786a5",)
WORKSPACE = "default"
LIVE = "current_stage != 'Deleted_Internal'"


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URI (None for other URIs, memory)."""
    rest = uri.removeprefix("sqlite:").split("?", 1)[0] if uri.startswith("sqlite:") else ""
    if not rest.startswith("///"):
        return None
    path = unquote(rest[3:])
    return None if path in ("", ":memory:") else Path(path)


def schema_revision(path: Path) -> str | None:
    """MLflow's alembic revision of the sqlite file (None when it holds no MLflow schema)."""
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()
    return str(row[0]) if row else None


def open_registry(path: Path, notice: Any = None) -> SqliteClient | None:
    """A client on ``path`` when its schema is one of :data:`KNOWN_REVISIONS`; else None, after ``notice(text)``."""
    revision = schema_revision(path)
    if revision in KNOWN_REVISIONS:
        return SqliteClient(path)
    if notice is not None:
        notice(
            f"notice: {path} is at MLflow schema revision {revision or 'none'}; the fast sqlite path knows "
            f"{', '.join(KNOWN_REVISIONS)}, so this runs through MLflow's client (slower)"
        )
    return None


class SqliteClient:
    """MLflow's registry tables in one sqlite file, read and written with ``sqlite3``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # mode=rw: never creates the file; autocommit, with explicit BEGIN IMMEDIATE around each write
        self.conn = sqlite3.connect(f"file:{quote(str(self.path))}?mode=rw", uri=True, timeout=60,
                                    isolation_level=None, check_same_thread=False)  # fmt: skip

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken before the first read in it (MLflow's other writers wait, as we do)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def rows(self, sql: str, params: Any = ()) -> list[Any]:
        return self.conn.execute(sql, params).fetchall()

    # ---------------------------------------------------------------------------------------- registered models
    def _model_row(self, name: str) -> Any:
        row = self.conn.execute(
            "SELECT name, creation_time FROM registered_models WHERE workspace = ? AND name = ?",
            (WORKSPACE, name),
        ).fetchone()
        if row is None:
            raise BackendError("RESOURCE_DOES_NOT_EXIST", f"Registered Model with name={name} not found")
        return row

    def get_registered_model(self, name: str) -> ModelRecord:
        row = self._model_row(name)
        tags = dict(self.rows("SELECT key, value FROM registered_model_tags WHERE workspace = ? AND name = ?",
                              (WORKSPACE, name)))  # fmt: skip
        aliases = {a: str(v) for a, v in self.rows(
            "SELECT alias, version FROM registered_model_aliases WHERE workspace = ? AND name = ?", (WORKSPACE, name))}  # fmt: skip
        (top,) = self.conn.execute(
            f"SELECT MAX(version) FROM model_versions WHERE workspace = ? AND name = ? AND {LIVE}",
            (WORKSPACE, name),
        ).fetchone()
        latest = [VersionRecord(name, str(top), {}, [])] if top is not None else []
        return ModelRecord(
            name=row[0], tags=tags, aliases=aliases, latest_versions=latest, creation_timestamp=row[1] or 0
        )

    def search_registered_models(
        self, filter_string: str | None = None, max_results: int = 1000, page_token: str | None = None
    ) -> Page:
        """Every registered model with its tags, aliases and (as ``latest_versions``, tags left out) its newest
        version: one page."""
        if filter_string:
            raise BackendError(
                "INVALID_PARAMETER_VALUE", "the sqlite fast path lists every registered model only"
            )
        names = [r[0] for r in self.rows("SELECT name FROM registered_models WHERE workspace = ? ORDER BY name",
                                         (WORKSPACE,))]  # fmt: skip
        tags: dict[str, dict[str, str]] = {n: {} for n in names}
        for name, key, value in self.rows(
            "SELECT name, key, value FROM registered_model_tags WHERE workspace = ?", (WORKSPACE,)
        ):
            tags.setdefault(name, {})[key] = value
        aliases: dict[str, dict[str, str]] = {n: {} for n in names}
        for name, alias, version in self.rows(
            "SELECT name, alias, version FROM registered_model_aliases WHERE workspace = ?", (WORKSPACE,)
        ):
            aliases.setdefault(name, {})[alias] = str(version)
        newest = dict(self.rows(
            f"SELECT name, MAX(version) FROM model_versions WHERE workspace = ? AND {LIVE} GROUP BY name", (WORKSPACE,)
        ))  # fmt: skip
        return Page([ModelRecord(n, tags[n], aliases[n], [VersionRecord(n, str(newest[n]), {}, [])] if n in newest else [])
                     for n in names])  # fmt: skip

    def create_registered_model(self, name: str, tags: dict[str, str] | None = None) -> ModelRecord:
        now = _now()
        try:
            with self._write() as conn:
                conn.execute("INSERT INTO registered_models (name, creation_time, last_updated_time, description, "
                             "workspace) VALUES (?, ?, ?, NULL, ?)", (name, now, now, WORKSPACE))  # fmt: skip
                conn.executemany(
                    "INSERT INTO registered_model_tags (key, value, name, workspace) VALUES (?, ?, ?, ?)",
                    [(k, v, name, WORKSPACE) for k, v in (tags or {}).items()],
                )
        except sqlite3.IntegrityError:
            raise BackendError(
                "RESOURCE_ALREADY_EXISTS", f"Registered Model (name={name}) already exists."
            ) from None
        return ModelRecord(name=name, tags=dict(tags or {}), aliases={}, creation_timestamp=now)

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        with self._write() as conn:
            self._model_row(name)
            conn.execute("INSERT OR REPLACE INTO registered_model_tags (key, value, name, workspace) VALUES (?, ?, ?, ?)",
                         (key, value, name, WORKSPACE))  # fmt: skip

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        with self._write() as conn:
            self._model_row(name)
            conn.execute("DELETE FROM registered_model_tags WHERE workspace = ? AND name = ? AND key = ?",
                         (WORKSPACE, name, key))  # fmt: skip

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        with self._write() as conn:
            self._version_row(name, version)
            conn.execute("INSERT OR REPLACE INTO registered_model_aliases (alias, version, name, workspace) "
                         "VALUES (?, ?, ?, ?)", (alias, int(version), name, WORKSPACE))  # fmt: skip
            conn.execute("UPDATE registered_models SET last_updated_time = ? WHERE workspace = ? AND name = ?",
                         (_now(), WORKSPACE, name))  # fmt: skip

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        with self._write() as conn:
            self._model_row(name)
            conn.execute("DELETE FROM registered_model_aliases WHERE workspace = ? AND name = ? AND alias = ?",
                         (WORKSPACE, name, alias))  # fmt: skip
            conn.execute("UPDATE registered_models SET last_updated_time = ? WHERE workspace = ? AND name = ?",
                         (_now(), WORKSPACE, name))  # fmt: skip

    # ---------------------------------------------------------------------------------------- versions
    def _version_row(self, name: str, version: str | int) -> Any:
        row = self.conn.execute(
            f"SELECT name, version, creation_time, source, run_id, description FROM model_versions "
            f"WHERE workspace = ? AND name = ? AND version = ? AND {LIVE}", (WORKSPACE, name, int(version)),
        ).fetchone()  # fmt: skip
        if row is None:
            raise BackendError(
                "RESOURCE_DOES_NOT_EXIST", f"Model Version (name={name}, version={version}) not found"
            )
        return row

    def get_model_version(self, name: str, version: str) -> VersionRecord:
        row = self._version_row(name, version)
        tags = dict(self.rows("SELECT key, value FROM model_version_tags WHERE workspace = ? AND name = ? AND version = ?",
                              (WORKSPACE, name, int(version))))  # fmt: skip
        aliases = [a for (a,) in self.rows(
            "SELECT alias FROM registered_model_aliases WHERE workspace = ? AND name = ? AND version = ?",
            (WORKSPACE, name, int(version)))]  # fmt: skip
        return VersionRecord(name=row[0], version=str(row[1]), tags=tags, aliases=aliases, run_id=row[4] or "",
                             source=row[3] or "", creation_timestamp=row[2] or 0, description=row[5] or "")  # fmt: skip

    def get_model_version_by_alias(self, name: str, alias: str) -> VersionRecord:
        self._model_row(name)
        row = self.conn.execute(
            "SELECT version FROM registered_model_aliases WHERE workspace = ? AND name = ? AND alias = ?",
            (WORKSPACE, name, alias),
        ).fetchone()
        if row is None:
            raise BackendError("INVALID_PARAMETER_VALUE", f"Registered model alias {alias} not found.")
        return self.get_model_version(name, str(row[0]))

    def create_model_version(
        self, name: str, source: str, run_id: str | None = None, tags: dict[str, str] | None = None,
        description: str | None = None,
    ) -> VersionRecord:  # fmt: skip
        """The next version number of ``name`` (max + 1, as MLflow numbers them), in one write transaction."""
        now = _now()
        with self._write() as conn:
            self._model_row(name)
            (top,) = conn.execute("SELECT MAX(version) FROM model_versions WHERE workspace = ? AND name = ?",
                                  (WORKSPACE, name)).fetchone()  # fmt: skip
            version = int(top or 0) + 1
            conn.execute(
                "INSERT INTO model_versions (name, version, creation_time, last_updated_time, description, user_id, "
                "current_stage, source, run_id, status, status_message, run_link, storage_location, workspace) "
                "VALUES (?, ?, ?, ?, ?, NULL, 'None', ?, ?, 'READY', NULL, ?, NULL, ?)",
                (name, version, now, now, description or "", source, run_id or "", "", WORKSPACE),
            )
            conn.executemany(
                "INSERT INTO model_version_tags (key, value, name, version, workspace) VALUES (?, ?, ?, ?, ?)",
                [(k, v, name, version, WORKSPACE) for k, v in (tags or {}).items()],
            )
            conn.execute("UPDATE registered_models SET last_updated_time = ? WHERE workspace = ? AND name = ?",
                         (now, WORKSPACE, name))  # fmt: skip
        return VersionRecord(name=name, version=str(version), tags=dict(tags or {}), aliases=[], run_id=run_id or "",
                             source=source, creation_timestamp=now, description=description or "")  # fmt: skip

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        with self._write() as conn:
            self._version_row(name, version)
            conn.execute("INSERT OR REPLACE INTO model_version_tags (key, value, name, version, workspace) "
                         "VALUES (?, ?, ?, ?, ?)", (key, value, name, int(version), WORKSPACE))  # fmt: skip

    def delete_model_version_tag(self, name: str, version: str, key: str) -> None:
        with self._write() as conn:
            self._version_row(name, version)
            conn.execute("DELETE FROM model_version_tags WHERE workspace = ? AND name = ? AND version = ? AND key = ?",
                         (WORKSPACE, name, int(version), key))  # fmt: skip

    # ---------------------------------------------------------------------------------------- runs
    def get_experiment_by_name(self, name: str) -> ExperimentRecord | None:
        row = self.conn.execute(
            "SELECT experiment_id, name, lifecycle_stage FROM experiments WHERE workspace = ? AND name = ?",
            (WORKSPACE, name),
        ).fetchone()
        return None if row is None else ExperimentRecord(str(row[0]), row[1], row[2] or "active")

    def create_run(
        self, experiment_id: str, tags: dict[str, str] | None = None, run_name: str | None = None
    ) -> RunRecord:
        """A RUNNING run in ``experiment_id`` with ``tags`` and ``mlflow.runName``, as MLflow's create_run writes it."""
        tags = dict(tags or {})
        run_id, now = uuid.uuid4().hex, _now()
        with self._write() as conn:
            row = conn.execute("SELECT artifact_location, lifecycle_stage FROM experiments WHERE experiment_id = ?",
                               (int(experiment_id),)).fetchone()  # fmt: skip
            if row is None or row[1] != "active":
                raise BackendError(
                    "INVALID_STATE", f"experiment {experiment_id} does not exist or is not active"
                )
            name = run_name or tags.get("mlflow.runName") or f"run-{run_id[:8]}"
            tags.setdefault("mlflow.runName", name)
            artifact_uri = f"{str(row[0]).rstrip('/')}/{run_id}/artifacts"
            conn.execute(
                "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
                "start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id, deleted_time) "
                "VALUES (?, ?, 'UNKNOWN', '', '', ?, 'RUNNING', ?, NULL, '', 'active', ?, ?, NULL)",
                (run_id, name, tags.get("mlflow.user", "unknown"), now, artifact_uri, int(experiment_id)),
            )
            conn.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                             [(k, v, run_id) for k, v in tags.items()])  # fmt: skip
        return RunRecord(
            RunInfoRecord(run_id, str(experiment_id), "RUNNING", artifact_uri), RunDataRecord(tags)
        )

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        with self._write() as conn:
            changed = conn.execute("UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?",
                                   (status, _now(), run_id)).rowcount  # fmt: skip
            if not changed:
                raise BackendError("RESOURCE_DOES_NOT_EXIST", f"Run with id={run_id} not found")

    def get_run(self, run_id: str) -> RunRecord:
        row = self.conn.execute(
            "SELECT run_uuid, experiment_id, status, artifact_uri, lifecycle_stage FROM runs WHERE run_uuid = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            raise BackendError("RESOURCE_DOES_NOT_EXIST", f"Run with id={run_id} not found")
        return RunRecord(
            RunInfoRecord(row[0], str(row[1]), row[2] or "", row[3] or "", row[4] or "active"),
            RunDataRecord(dict(self.rows("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,))),
                          dict(self.rows("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,))),
                          {k: float(v) for k, v in self.rows("SELECT key, value FROM latest_metrics WHERE run_uuid = ?",
                                                             (run_id,))}),
        )  # fmt: skip

    _TAG_FILTER = re.compile(r"^tags\.`(?P<key>[^`]+)` = '(?P<value>(?:[^'\\]|\\.)*)'$")

    def search_runs(
        self, experiment_ids: list[str], filter_string: str = "", run_view_type: int = 1, max_results: int = 1000,
        page_token: str | None = None,
    ) -> Page:  # fmt: skip
        """Runs of the experiments, optionally with one ``tags.`KEY` = 'VALUE'`` filter (the audit trail's), all tags."""
        where = [f"experiment_id IN ({', '.join('?' * len(experiment_ids))})"]
        params: list[Any] = [int(e) for e in experiment_ids]
        if int(run_view_type) == 1:
            where.append("lifecycle_stage = 'active'")
        elif int(run_view_type) == 2:
            where.append("lifecycle_stage = 'deleted'")
        if filter_string:
            match = self._TAG_FILTER.match(filter_string.strip())
            if not match:
                raise BackendError(
                    "INVALID_PARAMETER_VALUE", f"the sqlite fast path cannot filter {filter_string!r}"
                )
            where.append("run_uuid IN (SELECT run_uuid FROM tags WHERE key = ? AND value = ?)")
            params += [match["key"], re.sub(r"\\(.)", r"\1", match["value"])]
        runs = self.rows(
            "SELECT run_uuid, experiment_id, status, artifact_uri, lifecycle_stage FROM runs WHERE "
            + " AND ".join(where) + " ORDER BY start_time DESC, run_uuid", params,
        )  # fmt: skip
        tags: dict[str, dict[str, str]] = {r[0]: {} for r in runs}
        if runs:
            for key, value, run_uuid in self.rows(
                "SELECT key, value, run_uuid FROM tags WHERE run_uuid IN (SELECT run_uuid FROM runs WHERE "
                + " AND ".join(where) + ")", params,
            ):  # fmt: skip
                tags[run_uuid][key] = value
        return Page([RunRecord(RunInfoRecord(r[0], str(r[1]), r[2] or "", r[3] or "", r[4] or "active"),
                               RunDataRecord(tags[r[0]])) for r in runs])  # fmt: skip


def _now() -> int:
    return int(time.time() * 1000)
