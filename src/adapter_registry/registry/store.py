"""The one facade over MLflow: a method per registry operation, the project's own entities out, one error type.

Everything that talks to MLflow (tracking and model registry) lives here, so the CLI, the pipeline's register
node and the tests share one path, and MLflow exceptions are translated into ``RegistryError`` at this
boundary. Stage logic (gates, rollback), the audit chain and lineage are pure modules on top of this one.

Stages are aliases (``candidate``, ``staging``, ``production``: one version each per adapter) mirrored in the
``ar.stage`` tag, which also records ``archived`` and survives in search results (MLflow's version search
does not populate aliases).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from adapter_registry.registry.entities import (
    ADAPTER_ARTIFACT,
    AUDIT_EXPERIMENT,
    DEFAULT_EXPERIMENT,
    STAGES,
    AdapterVersion,
    RegistryError,
    Tag,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

__all__ = ["AdapterStore", "RegistryError", "parse_ref", "sha256_file", "sha256_folder"]

REQUIRED_ADAPTER_FILES = ("adapter_config.json",)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_SAFE_RELATIVE_PATH = re.compile(r"^[\w.\- /]+$")  # what MLflow accepts in a tag key
SUMMARY_TAGS = (Tag.STAGE, Tag.BASE_ID, Tag.BASE_FINGERPRINT, Tag.METHOD, Tag.TASK, Tag.RUN_ID)
_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]{0,255}$")
_CODES = {  # MLflow error codes -> ours
    "RESOURCE_DOES_NOT_EXIST": "NOT_FOUND",
    "RESOURCE_ALREADY_EXISTS": "ALREADY_EXISTS",
    "INVALID_PARAMETER_VALUE": "INVALID_INPUT",
    "PERMISSION_DENIED": "PERMISSION_DENIED",
    "UNAUTHENTICATED": "UNAUTHENTICATED",
}


# ------------------------------------------------------------------------------------------------ helpers
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_folder(folder: Path) -> dict[str, str]:
    """Relative POSIX path -> sha256 of every file below ``folder``."""
    return {
        p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME/VERSION`` -> (name, version, None); ``NAME@STAGE`` -> (name, None, stage)."""
    if "@" in ref:
        name, _, stage = ref.rpartition("@")
        if not name or stage not in STAGES:
            raise RegistryError(
                "INVALID_INPUT", f"{ref!r}: stage {stage!r} does not exist; use one of {', '.join(STAGES)}"
            )
        if stage == "archived":
            raise RegistryError(
                "INVALID_INPUT", f"{ref!r}: many versions are archived; address one as NAME/VERSION"
            )
        return name, None, stage
    name, sep, version = ref.rpartition("/")
    if not sep or not name or not version.isdigit() or int(version) < 1:
        raise RegistryError(
            "INVALID_INPUT", f"{ref!r} is not NAME/VERSION (e.g. support_sft_lora/3) or NAME@STAGE"
        )
    return name, version, None


def current_user() -> str:
    """The MLflow user (MLFLOW_TRACKING_USERNAME), else the OS user."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def _created(ms: int | None) -> dt.datetime:
    return dt.datetime.fromtimestamp((ms or 0) / 1000, tz=dt.UTC)


# ------------------------------------------------------------------------------------------------ store
class AdapterStore:
    """Registered adapters in one MLflow tracking store (sqlite file or ``http://`` server)."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self._client: MlflowClient = MlflowClient(
            tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri
        )

    @classmethod
    def from_env(cls) -> AdapterStore:
        """MLFLOW_TRACKING_URI if set, else ``sqlite:///<cwd>/mlflow.db``."""
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
        return cls(uri)

    def __repr__(self) -> str:
        return f"AdapterStore({self.tracking_uri!r})"

    # -------------------------------------------------------------------------------------- translation
    @contextlib.contextmanager
    def _mlflow(self, doing: str) -> Iterator[None]:
        """Translate MLflow (and transport) errors raised while ``doing`` into RegistryError."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except RegistryError:
            raise
        except MlflowException as exc:
            code = _CODES.get(exc.error_code, exc.error_code or "BACKEND")
            first_line = str(exc.message).strip().splitlines()[0] if exc.message else type(exc).__name__
            raise RegistryError(code, f"{doing}: {first_line}") from exc

    # -------------------------------------------------------------------------------------- register
    def register_adapter(
        self,
        model_name: str,
        adapter_dir: Path,
        tags: Mapping[str, str],
        metrics: Mapping[str, float],
        artifacts: Mapping[str, Path] | None = None,
        run_id: str | None = None,
        description: str = "",
    ) -> AdapterVersion:
        """Log an adapter folder into a run, check the upload, and register it as a ``candidate`` version.

        All or nothing: when a step fails after something was created, the version (and the registered model
        if this call created it) is deleted again and a RegistryError is raised.
        """
        adapter_dir = Path(adapter_dir)
        artifacts = dict(artifacts or {})
        self._check_name(model_name)
        checksums = self._check_adapter_dir(adapter_dir)
        self._check_inputs(tags, metrics, artifacts)
        version_tags = {
            **dict(tags),
            **{Tag.sha256(path): digest for path, digest in checksums.items()},
            **{Tag.metric(name): repr(float(value)) for name, value in metrics.items()},
        }
        run_id, started_run = self._resolve_run(run_id)
        version_tags.update({Tag.STAGE: "candidate", Tag.RUN_ID: run_id})
        created_model = False
        version: str | None = None
        try:
            self._upload(run_id, adapter_dir, artifacts)
            self._log_metrics(run_id, metrics)
            self._verify_upload(run_id, checksums)
            created_model = self._ensure_registered_model(model_name)
            version = self._create_version(model_name, run_id, version_tags, description)
            self._finalise_version(model_name, version)
        except Exception as exc:
            self._undo_registration(model_name, version, created_model)
            if started_run:
                with contextlib.suppress(Exception):
                    self._client.set_terminated(run_id, status="FAILED")
            if isinstance(exc, RegistryError):
                raise
            raise RegistryError(
                "REGISTRATION_FAILED", f"registering {model_name!r} from {str(adapter_dir)!r} failed: {exc}"
            ) from exc
        if started_run:
            with self._mlflow(f"closing run {run_id}"):
                self._client.set_terminated(run_id, status="FINISHED")
        return self.get_version(model_name, int(version))

    # The steps below are separate methods so each can be replaced in a test to inject a failure.
    @staticmethod
    def _check_name(model_name: str) -> None:
        if not isinstance(model_name, str) or not _NAME.match(model_name):
            raise RegistryError(
                "INVALID_INPUT", f"model_name {model_name!r} must be letters, digits, '_', '-' or '.'"
            )

    @staticmethod
    def _check_adapter_dir(adapter_dir: Path) -> dict[str, str]:
        if not adapter_dir.is_dir():
            raise RegistryError("INVALID_ADAPTER", f"adapter_dir {str(adapter_dir)!r} is not a folder")
        missing = [f for f in REQUIRED_ADAPTER_FILES if not (adapter_dir / f).is_file()]
        if not any((adapter_dir / f).is_file() for f in ADAPTER_WEIGHTS):
            missing.append(" or ".join(ADAPTER_WEIGHTS))
        if missing:
            raise RegistryError(
                "INVALID_ADAPTER", f"adapter_dir {str(adapter_dir)!r} lacks {', '.join(missing)}"
            )
        checksums = sha256_folder(adapter_dir)
        odd = [p for p in checksums if not _SAFE_RELATIVE_PATH.match(p)]
        if odd:
            raise RegistryError(
                "INVALID_ADAPTER", f"adapter file names {odd} use characters a tag key cannot hold"
            )
        return checksums

    @staticmethod
    def _check_inputs(
        tags: Mapping[str, str], metrics: Mapping[str, float], artifacts: Mapping[str, Path]
    ) -> None:
        bad_tags = {k: v for k, v in tags.items() if not isinstance(k, str) or not isinstance(v, str)}
        if bad_tags:
            raise RegistryError("INVALID_INPUT", f"tag values must be strings; got {bad_tags!r}")
        reserved = [
            k for k in tags if k.startswith((Tag.sha256(""), Tag.metric(""))) or k in (Tag.STAGE, Tag.RUN_ID)
        ]
        if reserved:
            raise RegistryError("INVALID_INPUT", f"tags {reserved} are written by the store; leave them out")
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RegistryError("INVALID_INPUT", f"metric {name!r} must be a number; got {value!r}")
        for name, path in artifacts.items():
            parts = PurePosixPath(name).parts
            if not parts or parts[0] == ADAPTER_ARTIFACT or ".." in parts or name.startswith("/"):
                raise RegistryError(
                    "INVALID_INPUT", f"artifact name {name!r} must be a relative path outside adapter/"
                )
            if not Path(path).exists():
                raise RegistryError("INVALID_INPUT", f"artifact {name!r}: {str(path)!r} does not exist")

    def _resolve_run(self, run_id: str | None) -> tuple[str, bool]:
        """The run to log into, and whether this call started it."""
        if run_id:
            with self._mlflow(f"run_id {run_id!r}"):
                self._client.get_run(run_id)
            return run_id, False
        import mlflow

        active = mlflow.active_run()
        if active is not None:
            return active.info.run_id, False
        with self._mlflow(f"starting a run in experiment {DEFAULT_EXPERIMENT!r}"):
            experiment_id = self._experiment_id(DEFAULT_EXPERIMENT)
            return self._client.create_run(experiment_id).info.run_id, True

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self._client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self._client.create_experiment(name)
        except MlflowException:  # created meanwhile by someone else
            experiment = self._client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _upload(self, run_id: str, adapter_dir: Path, artifacts: Mapping[str, Path]) -> None:
        with self._mlflow(f"uploading {str(adapter_dir)!r} to run {run_id}"):
            self._client.log_artifacts(run_id, str(adapter_dir), ADAPTER_ARTIFACT)
            for name, path in artifacts.items():
                path = Path(path)
                if path.is_dir():
                    self._client.log_artifacts(run_id, str(path), name)
                    continue
                target = PurePosixPath(name)
                parent = None if str(target.parent) == "." else str(target.parent)
                if path.name == target.name:
                    self._client.log_artifact(run_id, str(path), parent)
                else:
                    with tempfile.TemporaryDirectory() as tmp:
                        renamed = Path(tmp) / target.name
                        shutil.copyfile(path, renamed)
                        self._client.log_artifact(run_id, str(renamed), parent)

    def _log_metrics(self, run_id: str, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        batch = [Metric(key=k, value=float(v), timestamp=now, step=0) for k, v in metrics.items()]
        with self._mlflow(f"logging metrics {sorted(metrics)} to run {run_id}"):
            for start in range(0, len(batch), 1000):
                self._client.log_batch(run_id, metrics=batch[start : start + 1000])

    def _verify_upload(self, run_id: str, checksums: Mapping[str, str]) -> None:
        """Download ``adapter/`` back and compare every file's sha256 with the local one."""
        with tempfile.TemporaryDirectory() as tmp:
            with self._mlflow(f"downloading {ADAPTER_ARTIFACT}/ of run {run_id} to check the upload"):
                local = Path(self._client.download_artifacts(run_id, ADAPTER_ARTIFACT, tmp))
            problem = checksum_problem(sha256_folder(local), checksums)
        if problem:
            raise RegistryError("CORRUPTED_UPLOAD", f"upload check of run {run_id} failed: {problem}")

    def _ensure_registered_model(self, model_name: str) -> bool:
        """Create the registered model if missing; True when this call created it."""
        from mlflow.exceptions import MlflowException

        with self._mlflow(f"registered model {model_name!r}"):
            try:
                self._client.get_registered_model(model_name)
                return False
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
            try:
                self._client.create_registered_model(model_name, tags={"ar.kind": "peft-adapter"})
                return True
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                return False

    def _create_version(self, model_name: str, run_id: str, tags: Mapping[str, str], description: str) -> str:
        with self._mlflow(f"creating a version of {model_name!r} from run {run_id}"):
            source = f"{self._client.get_run(run_id).info.artifact_uri.rstrip('/')}/{ADAPTER_ARTIFACT}"
            created = self._client.create_model_version(
                model_name, source=source, run_id=run_id, tags=dict(tags), description=description or None
            )
        return str(created.version)

    def _finalise_version(self, model_name: str, version: str) -> None:
        with self._mlflow(f"setting alias candidate on {model_name}/{version}"):
            self._client.set_registered_model_alias(model_name, "candidate", version)

    def _undo_registration(self, model_name: str, version: str | None, created_model: bool) -> None:
        with contextlib.suppress(Exception):
            if version is not None:
                self._client.delete_model_version(model_name, version)
            if created_model and not self._client.search_model_versions(f"name = '{_quote(model_name)}'"):
                self._client.delete_registered_model(model_name)

    # -------------------------------------------------------------------------------------- read
    def _entity(self, mv: ModelVersion) -> AdapterVersion:
        tags = dict(mv.tags or {})
        return AdapterVersion(
            name=mv.name,
            version=int(mv.version),
            stage=tags.get(Tag.STAGE, "candidate"),
            tags=tags,
            metrics=AdapterVersion.metrics_from_tags(tags),
            run_id=mv.run_id or tags.get(Tag.RUN_ID, ""),
            source=mv.source or "",
            created=_created(mv.creation_timestamp),
            description=mv.description or "",
            aliases=tuple(mv.aliases or ()),
        )

    def model_exists(self, name: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self._client.get_registered_model(name)
            return True
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise RegistryError(
                _CODES.get(exc.error_code, "BACKEND"), f"adapter {name!r}: {exc.message}"
            ) from exc

    def _require_model(self, name: str) -> None:
        if not self.model_exists(name):
            raise RegistryError("NOT_FOUND", f"adapter {name!r} is not registered")

    def get_version(self, name: str, version: int | str) -> AdapterVersion:
        """One version by number."""
        from mlflow.exceptions import MlflowException

        if not str(version).isdigit():
            raise RegistryError("INVALID_INPUT", f"version {version!r} of {name!r} is not a positive number")
        try:
            mv = self._client.get_model_version(name, str(version))
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                self._require_model(name)
                raise RegistryError("NOT_FOUND", f"adapter {name!r} has no version {version}") from exc
            raise RegistryError(
                _CODES.get(exc.error_code, "BACKEND"), f"{name}/{version}: {exc.message}"
            ) from exc
        return self._entity(mv)

    def holder(self, name: str, stage: str) -> AdapterVersion | None:
        """The version that holds ``stage`` (an alias) for adapter ``name``, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return self._entity(self._client.get_model_version_by_alias(name, stage))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                self._require_model(name)
                return None
            raise RegistryError(
                _CODES.get(exc.error_code, "BACKEND"), f"{name}@{stage}: {exc.message}"
            ) from exc

    def resolve(self, ref: str) -> AdapterVersion:
        """``NAME/VERSION`` or ``NAME@STAGE`` -> the version."""
        name, version, stage = parse_ref(ref)
        if version is not None:
            return self.get_version(name, version)
        assert stage is not None
        found = self.holder(name, stage)
        if found is None:
            raise RegistryError("NOT_FOUND", f"no version of {name!r} holds stage {stage!r}")
        return found

    def list_versions(
        self,
        name: str | None = None,
        stage: str | None = None,
        base_model: str | None = None,
        method: str | None = None,
        tag_equals: Mapping[str, str] | None = None,
        summary: bool = False,
    ) -> list[AdapterVersion]:
        """Versions matching every given filter, by name then newest first.

        ``base_model`` matches the base id or fingerprint. ``summary=True`` may load only the tags a listing
        shows (stage, base, method, task, metrics) on sqlite; use ``get_version`` for everything.
        """
        if stage is not None and stage not in STAGES:
            raise RegistryError(
                "INVALID_INPUT", f"stage {stage!r} does not exist; use one of {', '.join(STAGES)}"
            )
        clauses = []
        if name:
            clauses.append(f"name = '{_quote(name)}'")
        if stage:
            clauses.append(f"tags.`{Tag.STAGE}` = '{stage}'")
        if method:
            clauses.append(f"tags.`{Tag.METHOD}` = '{_quote(method)}'")
        for key, value in (tag_equals or {}).items():
            clauses.append(f"tags.`{key}` = '{_quote(value)}'")
        if base_model:
            found = {}
            for key in (Tag.BASE_ID, Tag.BASE_FINGERPRINT):
                for v in self._search([*clauses, f"tags.`{key}` = '{_quote(base_model)}'"], summary):
                    found[(v.name, v.version)] = v
            versions = list(found.values())
        else:
            versions = self._search(clauses, summary)
        return sorted(versions, key=lambda v: (v.name, -v.version))

    def _search(self, clauses: list[str], summary: bool = False) -> list[AdapterVersion]:
        if self.tracking_uri.startswith("sqlite:"):
            return self._search_sqlite(clauses_to_filters(clauses), summary)
        filter_string = " AND ".join(clauses) or None
        out: list[AdapterVersion] = []
        token = None
        with self._mlflow(f"searching versions where {filter_string or 'anything'}"):
            while True:
                page = self._client.search_model_versions(filter_string, max_results=10_000, page_token=token)
                out.extend(self._entity(mv) for mv in page)
                token = page.token
                if not token:
                    return out

    def _search_sqlite(self, filters: list[tuple[str, str]], summary: bool = False) -> list[AdapterVersion]:
        """Fast path for sqlite stores: three read-only SQL queries over MLflow's registry tables.

        MLflow's ``search_model_versions`` builds an ORM object per tag and takes ~15 s to list 10,000 versions
        with ~45 tags each; this reads the same rows (model_versions, model_version_tags,
        registered_model_aliases; default workspace) with plain SQL and never writes. Results equal the
        MLflow path's (tested in tests/registry/test_store.py). Server stores use MLflow's search.
        """
        import sqlalchemy as sa

        if not hasattr(self, "_engine"):
            self._engine = sa.create_engine(self.tracking_uri)
        live = "current_stage != 'Deleted_Internal'"
        with self._mlflow("reading the sqlite registry"), self._engine.connect() as conn:
            matched: set[tuple[str, int]] | None = None
            for key, value in filters:  # each filter is one indexed look-up; intersect in Python
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
        out: list[AdapterVersion] = []
        for name, version, created, source, run_id, description in rows:
            ident = (name, int(version))
            version_tags = tags[ident]
            out.append(
                AdapterVersion(
                    name=name,
                    version=int(version),
                    stage=version_tags.get(Tag.STAGE, "candidate"),
                    tags=version_tags,
                    metrics=AdapterVersion.metrics_from_tags(version_tags),
                    run_id=run_id or version_tags.get(Tag.RUN_ID, ""),
                    source=source or "",
                    created=_created(created),
                    description=description or "",
                    aliases=tuple(sorted(aliases.get(ident, ()))),
                )
            )
        return out

    def list_models(self) -> list[str]:
        with self._mlflow("listing registered models"):
            names: list[str] = []
            token = None
            while True:
                page = self._client.search_registered_models(max_results=1000, page_token=token)
                names.extend(m.name for m in page)
                token = page.token
                if not token:
                    return sorted(names)

    # -------------------------------------------------------------------------------------- stages
    def set_stage(self, name: str, version: int, stage: str) -> None:
        """Give ``version`` the stage: tag ``ar.stage`` and, except for archived, the alias of the same name."""
        if stage not in STAGES:
            raise RegistryError(
                "INVALID_INPUT", f"stage {stage!r} does not exist; use one of {', '.join(STAGES)}"
            )
        with self._mlflow(f"moving {name}/{version} to {stage}"):
            self._client.set_model_version_tag(name, str(version), Tag.STAGE, stage)
            if stage != "archived":
                self._client.set_registered_model_alias(name, stage, str(version))

    def drop_alias(self, name: str, stage: str) -> None:
        with self._mlflow(f"removing alias {stage!r} of {name!r}"):
            self._client.delete_registered_model_alias(name, stage)

    def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        with self._mlflow(f"tagging {name}/{version} with {key}"):
            self._client.set_model_version_tag(name, str(version), key, value)

    # -------------------------------------------------------------------------------------- audit runs
    def append_audit_run(self, run_name: str, tags: Mapping[str, str]) -> str:
        """Write one audit event as a new, finished run in the audit experiment. Never updates a run."""
        with self._mlflow(f"writing audit event {run_name!r}"):
            experiment_id = self._experiment_id(AUDIT_EXPERIMENT)
            run = self._client.create_run(experiment_id, tags=dict(tags), run_name=run_name)
            self._client.set_terminated(run.info.run_id, status="FINISHED")
            return run.info.run_id

    def audit_runs(self, model: str) -> list[tuple[dict[str, str], bool]]:
        """Tags of every audit run of ``model`` (deleted ones too), with a flag that says it was deleted."""
        from mlflow.entities import ViewType

        with self._mlflow(f"reading the audit trail of {model!r}"):
            experiment = self._client.get_experiment_by_name(AUDIT_EXPERIMENT)
            if experiment is None:
                return []
            out: list[Any] = []
            token = None
            while True:
                page = self._client.search_runs(
                    [experiment.experiment_id],
                    filter_string=f"tags.`ar.audit.model` = '{_quote(model)}'",
                    run_view_type=ViewType.ALL,
                    max_results=1000,
                    page_token=token,
                )
                out.extend((dict(r.data.tags), r.info.lifecycle_stage == "deleted") for r in page)
                token = page.token
                if not token:
                    return out

    # -------------------------------------------------------------------------------------- files
    def download_adapter(self, version: AdapterVersion, dst: Path) -> Path:
        """Download the version's adapter files into ``dst`` (a fresh folder) and return the folder."""
        with self._mlflow(f"downloading the adapter of {version.ref}"):
            from mlflow.artifacts import download_artifacts

            return Path(
                download_artifacts(
                    artifact_uri=version.source, dst_path=str(dst), tracking_uri=self.tracking_uri
                )
            )

    def pull(self, ref: str, dest: Path) -> AdapterVersion:
        """Download ``ref``'s adapter into ``dest`` after checking every file against the registered sha256.

        The files are downloaded beside ``dest`` first; on any mismatch nothing is left in ``dest``.
        """
        dest = Path(dest)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise RegistryError(
                "INVALID_INPUT", f"destination {str(dest)!r} exists and is not an empty folder"
            )
        version = self.resolve(ref)
        expected = version.checksums
        if not expected:
            raise RegistryError(
                "CORRUPTED", f"{version.ref} has no registered checksums; refusing to pull it"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.pull-", dir=dest.parent))
        try:
            folder = self.download_adapter(version, staging)
            problem = checksum_problem(sha256_folder(folder), expected)
            if problem:
                raise RegistryError("CORRUPTED", f"pull of {version.ref} refused: {problem}")
            dest.mkdir(exist_ok=True)
            for item in folder.iterdir():
                shutil.move(str(item), dest / item.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return version

    def run_info(self, run_id: str) -> dict[str, Any]:
        """Status, experiment, params and metrics of a run (for lineage)."""
        with self._mlflow(f"run {run_id!r}"):
            run = self._client.get_run(run_id)
        return {
            "run_id": run_id,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "artifact_uri": run.info.artifact_uri,
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
        }

    # -------------------------------------------------------------------------------------- identity
    def authenticated_user(self) -> str | None:
        """The user the tracking server authenticated (MLflow basic-auth), or None when it runs no auth."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return None
        import requests

        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
        url = f"{self.tracking_uri.rstrip('/')}/api/2.0/mlflow/users/current"
        try:
            response = requests.get(url, auth=(user, password or "") if user else None, timeout=10)
        except requests.RequestException as exc:
            raise RegistryError(
                "BACKEND", f"tracking server {self.tracking_uri!r} unreachable: {exc}"
            ) from exc
        if response.status_code == 404:
            return None
        if response.status_code == 401:
            raise RegistryError(
                "UNAUTHENTICATED", f"tracking server refused user {user!r}: wrong or no credentials"
            )
        response.raise_for_status()
        return str(response.json().get("user", {}).get("username") or user)


def checksum_problem(got: Mapping[str, str], expected: Mapping[str, str]) -> str | None:
    """A one-line description of the first difference between two checksum maps, or None."""
    missing = sorted(set(expected) - set(got))
    if missing:
        return f"file {missing[0]!r} is missing"
    extra = sorted(set(got) - set(expected))
    if extra:
        return f"file {extra[0]!r} is not registered"
    for path in sorted(expected):
        if got[path] != expected[path]:
            return f"file {path!r} has sha256 {got[path][:12]}…, registered {expected[path][:12]}…"
    return None


def _quote(value: str) -> str:
    return str(value).replace("'", "\\'")


def clauses_to_filters(clauses: list[str]) -> list[tuple[str, str]]:
    """Our own simple clauses back into (key, value) pairs; key 'name' or a tag key."""
    out = []
    for clause in clauses:
        match = re.match(r"^(?:tags\.`(?P<tag>[^`]+)`|(?P<name>name)) = '(?P<value>.*)'$", clause)
        if not match:
            raise ValueError(f"unsupported clause {clause!r}")
        out.append((match["tag"] or "name", match["value"].replace("\\'", "'")))
    return out
