"""The one facade over MLflow: a method per registry operation, the project's own entities out, one error type.

Everything that talks to MLflow (tracking and model registry) goes through here, so the CLI, the pipeline's
register node and the tests share one path, and MLflow exceptions are translated into ``RegistryError`` at this
boundary (``registry.errors``). Searching is ``registry.search`` (filters as data, MLflow's search or a sqlite
fast path), the checks of a registration's inputs ``registry.registration``, who acts ``registry.policy``. Stage
logic (gates, rollback), the audit chain and lineage are pure modules on top of this one.

Stages are aliases (``candidate``, ``staging``, ``production``: one version each per adapter), read from the
registry itself (``entities.stage_of``); a version replaced in a stage holds no alias and carries
``ar.archived``. Nothing mirrors an alias, so whatever moves one (this CLI, MLflow's UI or REST) is what every
reader sees; ``registry.stages`` says whether an audited promotion put it there.

Reads and promotions go through a light client where there is one (``registry.rest`` over HTTP,
``registry.sqlite`` on a sqlite file of a known schema), so a read command never imports mlflow; registration,
downloads, webhooks and everything else go through ``MlflowClient``, created on first use. Writes that read
before they write hold the adapter's writer lock (``registry.locking``), and keep the adapter's version summary
(``registry.summary``) current.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future
from dataclasses import replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from adapter_registry.adapter_folder import symlinks
from adapter_registry.checksums import checksum_problem, sha256_folder
from adapter_registry.registry import summary
from adapter_registry.registry.entities import (
    ADAPTER_ARTIFACT,
    AUDIT_EXPERIMENT,
    DEFAULT_EXPERIMENT,
    FLEET_EXPERIMENT,
    LOCK_MODEL,
    STAGES,
    AdapterVersion,
    RegistryError,
    RunTag,
    Tag,
)
from adapter_registry.registry.errors import error_code, lookup, mask_credentials, mlflow_errors
from adapter_registry.registry.locking import Ticket, holds, writer_lock
from adapter_registry.registry.registration import check_registration, version_tags_of
from adapter_registry.registry.search import (
    VersionFilter,
    quote,
    search_mlflow,
    search_sqlite,
    search_summaries,
    summary_answers,
)
from adapter_registry.registry.sqlite import SqliteClient, open_registry, sqlite_path

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["ALIAS_EVENTS", "AdapterStore", "RegistryError", "parse_ref"]


def _notice(text: str) -> None:
    import logging

    logging.getLogger("adapter_registry.registry").warning(text)


ALIAS_EVENTS = ("model_version_alias.created", "model_version_alias.deleted")  # what moves a stage
log = logging.getLogger(__name__)


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


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else ``sqlite:///<cwd>/mlflow.db`` (what the CLI, ``serve`` and ``kedro run``
    use)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _files_problem(folder: Path, expected: Mapping[str, str]) -> str | None:
    """What is wrong with downloaded files against the registered sha256 (a symbolic link among them too)."""
    links = symlinks(folder)
    if links:
        return f"it holds symbolic links: {', '.join(links)}"
    return checksum_problem(sha256_folder(folder), expected)


def _abandoned(tags: Mapping[str, str], registration_id: str | None) -> bool:
    """A run tagged by a registration that is over: retried under its id, or its process on this host is gone."""
    if registration_id and tags.get(Tag.REGISTRATION_ID) == registration_id:
        return True
    pid = tags.get(RunTag.PID, "")
    if tags.get(RunTag.HOST) != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: is there such a process?
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: alive
        return False
    return False


# ------------------------------------------------------------------------------------------------ store
class AdapterStore:
    """Registered adapters in one MLflow tracking store (sqlite file or ``http://`` server).

    ``must_exist=True`` (every CLI command) refuses a sqlite URI whose file does not exist instead of creating an
    empty registry; the pipeline's registration (the default) creates it.
    """

    def __init__(
        self, tracking_uri: str, registry_uri: str | None = None, *, must_exist: bool = False
    ) -> None:
        self.tracking_uri = tracking_uri
        self._registry_uri = registry_uri or tracking_uri
        self._mlflow: MlflowClient | None = None
        self._fast: Any = None
        self._audit_id: str | None = None
        self._app: dict[str, Any] | bool | None = False  # the server's auth app (False: not asked yet)
        self._dirty: dict[
            str, dict[int, AdapterVersion | None]
        ] = {}  # summary entries to rewrite, per adapter
        self._model_read: dict[str, Any] = {}  # registered models read under their writer lock (read_model)
        self._db = sqlite_path(tracking_uri) if self._registry_uri == tracking_uri else None
        if self._db is not None:
            if self._db.exists():
                self._fast = open_registry(self._db, notice=_notice)
            elif must_exist:
                raise RegistryError(
                    "NOT_FOUND",
                    f"no registry at {tracking_uri}: {self._db} does not exist. Run `make run` (or `kedro run`) "
                    "in the project to create it, or point MLFLOW_TRACKING_URI / --tracking-uri at a registry",
                )
        elif tracking_uri.startswith(("http://", "https://")) and self._registry_uri == tracking_uri:
            from adapter_registry.registry import rest

            if rest.usable():
                self._fast = rest.RestClient(tracking_uri)

    @property
    def _client(self) -> MlflowClient:
        """MLflow's client (imports mlflow on first use: 1.7 s)."""
        if self._mlflow is None:
            from mlflow import MlflowClient

            self._mlflow = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self._registry_uri)
        return self._mlflow

    @property
    def _ops(self) -> Any:
        """The light client where there is one, else MLflow's (the same method names and arguments)."""
        return self._fast if self._fast is not None else self._client

    @classmethod
    def from_env(cls, must_exist: bool = False) -> AdapterStore:
        """The store at :func:`default_tracking_uri`."""
        return cls(default_tracking_uri(), must_exist=must_exist)

    def __repr__(self) -> str:
        return f"AdapterStore({mask_credentials(self.tracking_uri)!r})"

    # -------------------------------------------------------------------------------------- writer lock
    @contextlib.contextmanager
    def writer_lock(self, name: str) -> Iterator[None]:
        """Hold the writer lock of adapter ``name`` (``registry.locking``: a file lock on sqlite, a ticket elsewhere).
        Leaving the outermost hold rewrites the adapter's version summary once for whatever changed in it."""
        from adapter_registry.registry.policy import current_user

        file = self._db.with_name(self._db.name + ".lock") if self._db is not None else None
        outermost = not holds(self.tracking_uri, name)
        with writer_lock(
            self.tracking_uri, name, file=file, tickets=None if file else self, user=current_user()
        ):
            try:
                yield
            finally:
                changed = self._dirty.pop(name, None) if outermost else None
                try:
                    if changed:
                        self.write_summary(name, changed)
                finally:
                    if outermost:
                        self._model_read.pop(name, None)

    def read_model(self, name: str, pool: Executor) -> Future[None]:
        """Read ``name``'s registered model in ``pool``, for the summary this hold of its writer lock rewrites on
        leaving (a writer reads it beside its other reads instead of after its writes: one round trip less). Only
        this hold's own writes change the summary, and they are applied to what was read."""
        if not holds(
            self.tracking_uri, name
        ):  # checked here: the lock is held by this thread, not the pool's
            raise RegistryError("INTERNAL", f"read_model({name!r}) outside the writer lock of {name!r}")

        def read() -> None:
            with mlflow_errors(f"reading registered model {name!r}"):
                self._model_read[name] = self._ops.get_registered_model(name)

        return pool.submit(read)

    def _changed(self, name: str, version: int, now: AdapterVersion | None = None) -> None:
        """Note that ``name``/``version`` changed (``now``: as it is now, when the caller knows; else re-read)."""
        self._dirty.setdefault(name, {})[int(version)] = now

    def take_ticket(self, name: str, holder: str, expires_ms: int) -> int:
        """A new ticket of ``name``'s writer lock (a version of LOCK_MODEL); its number."""
        import random
        import time

        doing = f"taking a writer ticket for {name!r} (a version of registered model {LOCK_MODEL!r})"
        tags = {"ar.lock.of": name, "ar.lock.state": "held", "ar.lock.holder": holder,
                "ar.lock.expires": str(expires_ms)}  # fmt: skip
        with mlflow_errors(doing):
            for attempt in range(30):
                try:
                    created = self._ops.create_model_version(
                        LOCK_MODEL, source="adapter-registry:/lock", tags=tags
                    )
                    return int(created.version)
                except Exception as exc:
                    code = error_code(exc)
                    if code == "RESOURCE_DOES_NOT_EXIST" and attempt < 29:  # the first writer ever: create it
                        with contextlib.suppress(RegistryError), mlflow_errors(f"creating {LOCK_MODEL!r}"):
                            self._ops.create_registered_model(LOCK_MODEL, tags={"ar.kind": "writer-locks"})
                        continue
                    if code == "PERMISSION_DENIED":
                        raise RegistryError(
                            "PERMISSION_DENIED", f"{doing}: permission denied; every writer needs EDIT on registered "
                            f"model {LOCK_MODEL!r} (an admin grants it, as EDIT on the audit experiment)",
                        ) from exc  # fmt: skip
                    # MLflow retries a version number taken meanwhile 3 times, then gives up: so do we, longer
                    if "Model Version creation error" not in str(exc) or attempt == 29:
                        raise
                    time.sleep(0.02 + random.random() * 0.1)
        raise AssertionError("unreachable")

    def live_tickets(self, name: str) -> list[Ticket]:
        where = VersionFilter(LOCK_MODEL).with_tag("ar.lock.of", name).with_tag("ar.lock.state", "held")
        with mlflow_errors(f"reading the writer tickets of {name!r}"):
            found = search_mlflow(self._ops, where, aliases=False)
        return [Ticket(v.version, v.tags.get("ar.lock.holder", "?"), int(v.tags.get("ar.lock.expires") or 0))
                for v in found]  # fmt: skip

    def renew_ticket(self, number: int, expires_ms: int) -> None:
        with mlflow_errors(f"renewing writer ticket {number}"):
            self._ops.set_model_version_tag(LOCK_MODEL, str(number), "ar.lock.expires", str(expires_ms))

    def release_ticket(self, number: int) -> None:
        with mlflow_errors(f"releasing writer ticket {number}"):
            self._ops.set_model_version_tag(LOCK_MODEL, str(number), "ar.lock.state", "released")

    # -------------------------------------------------------------------------------------- summary
    def write_summary(self, name: str, versions: Mapping[int, AdapterVersion | None] | None = None) -> None:
        """Rewrite ``name``'s version summary (``registry.summary``) for the ``versions`` that changed (each as it
        is now, or None to re-read it; None: rebuild from every version). Call it holding the writer lock."""
        with mlflow_errors(f"updating the version summary of {name!r}"):
            model = self._model_read.pop(name, None) or self._ops.get_registered_model(name)
            decoded = summary.decode(model.tags or {})
            if decoded is None or versions is None:
                entries = {v.version: summary.entry_of(v) for v in self._search(VersionFilter(name))}
            else:
                entries = {int(e["version"]): e for e in decoded[1]}
                for number, now in versions.items():
                    if now is None:
                        found = lookup(
                            partial(self._ops.get_model_version, name, str(number)), f"{name}/{number}"
                        )
                        now = None if found is None else AdapterVersion.from_model_version(found)
                    if now is None:
                        entries.pop(int(number), None)
                    else:
                        entries[int(number)] = summary.entry_of(now)
            tags = summary.encode(entries.values())
            current = dict(model.tags or {})
            for key in sorted(tags, key=lambda k: k == summary.HEADER):  # the header last: it seals the text
                if current.get(key) != tags[key]:
                    self._ops.set_registered_model_tag(name, key, tags[key])
            for key in current:
                if summary.is_summary_key(key) and key not in tags:
                    self._ops.delete_registered_model_tag(name, key)

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
        registration_id: str | None = None,
    ) -> AdapterVersion:
        """Log an adapter folder into a run, check the upload, and register it as a ``candidate`` version.

        All or nothing: when a step fails after something was created, the version (and the registered model
        if this call created it) is deleted again and a RegistryError is raised. A process killed part-way cannot
        undo anything; so the run is tagged while the registration is under way (``RunTag``), and every
        registration first marks FAILED the runs such a killed registration left RUNNING
        (``fail_dead_registrations``).

        ``registration_id`` is the caller's name for this registration, recorded on the version: a retry with the
        same id returns the version an earlier attempt registered (giving it the ``candidate`` alias when the
        attempt died before, and no newer version holds it) instead of registering a second one, so a caller that
        never heard back may simply call again.
        """
        adapter_dir = Path(adapter_dir)
        artifacts = dict(artifacts or {})
        checksums = check_registration(model_name, adapter_dir, tags, metrics, artifacts, registration_id)
        try:
            self.fail_dead_registrations(registration_id)
        except RegistryError as exc:  # cleaning up after a dead registration must not stop this one
            if exc.code == "UNREACHABLE":
                raise
            log.warning("could not look for runs of killed registrations: %s", exc.message)
        if registration_id:
            found = self.find_registration(model_name, registration_id)
            if found is not None:
                return self._finish_found(found)
        run_id, started_run = self._resolve_run(run_id)
        self._mark_run(run_id, "uploading", registration_id)
        version_tags = version_tags_of(tags, checksums, metrics, run_id, registration_id)
        created_model = False
        version: str | None = None
        try:
            self._upload(run_id, adapter_dir, artifacts)
            self._log_metrics(run_id, metrics)
            self._verify_upload(run_id, checksums)
            created_model = self._ensure_registered_model(model_name)
            with self.writer_lock(model_name):  # versions numbered and the candidate alias moved in order
                version = self._create_version(model_name, run_id, version_tags, description)
                self._finalise_version(model_name, version)
                self._changed(model_name, int(version))
        except Exception as exc:
            self._undo_registration(model_name, version, created_model)
            with contextlib.suppress(Exception):
                self._mark_run(run_id, "failed")
            if started_run:
                with contextlib.suppress(Exception):
                    self._client.set_terminated(run_id, status="FAILED")
            if isinstance(exc, RegistryError):
                raise
            raise RegistryError(
                "REGISTRATION_FAILED",
                mask_credentials(f"registering {model_name!r} from {str(adapter_dir)!r} failed: {exc}"),
            ) from exc
        self._mark_run(run_id, "registered")
        if started_run:
            with mlflow_errors(f"closing run {run_id}"):
                self._client.set_terminated(run_id, status="FINISHED")
        return self.get_version(model_name, int(version))

    def find_registration(self, model_name: str, registration_id: str) -> AdapterVersion | None:
        """The version of ``model_name`` registered with ``registration_id``, or None."""
        found = self.list_versions(name=model_name, tag_equals={Tag.REGISTRATION_ID: registration_id})
        return min(found, key=lambda v: v.version) if found else None

    def _finish_found(self, found: AdapterVersion) -> AdapterVersion:
        """An earlier attempt's version: give it ``candidate`` when that attempt died before (it holds no alias, was
        never archived, and no newer version is candidate)."""
        if found.aliases or found.tags.get(Tag.ARCHIVED) == "true":
            return found
        with self.writer_lock(found.name):  # as a registration moves candidate: in turn
            holder = self.holder(found.name, "candidate")
            if holder is not None and holder.version > found.version:
                return found
            self._finalise_version(found.name, str(found.version))
            self._changed(found.name, found.version)  # an attempt killed before its summary was written
        return self.get_version(found.name, found.version)

    def fail_dead_registrations(self, registration_id: str | None = None) -> list[str]:
        """Mark FAILED (state ``abandoned``) every RUNNING run whose registration was killed part-way; their ids.

        A registration is dead when its process ran on this host and is gone, or when it carries
        ``registration_id``: the caller retrying that id says the earlier attempt is over. Registrations of other
        hosts' live-or-unknown processes are left alone.
        """
        where = f"attributes.status = 'RUNNING' and tags.`{RunTag.STATE}` = 'uploading'"
        with mlflow_errors("looking for runs of killed registrations"):
            experiments: list[str] = []
            token = None
            while True:
                page = self._client.search_experiments(max_results=1000, page_token=token)
                experiments += [e.experiment_id for e in page]
                token = page.token
                if not token:
                    break
            runs = self._client.search_runs(experiments, where, max_results=1000) if experiments else []
        failed = []
        for run in (r for r in runs if _abandoned(dict(r.data.tags), registration_id)):
            run_id, tags = run.info.run_id, run.data.tags
            try:
                with mlflow_errors(f"marking run {run_id} of a killed registration FAILED"):
                    self._client.set_tag(run_id, RunTag.STATE, "abandoned")
                    self._client.set_terminated(run_id, status="FAILED")
            except RegistryError as exc:  # e.g. another user's run on a server with auth: leave it
                log.warning("run %s of a killed registration is left RUNNING: %s", run_id, exc.message)
                continue
            log.warning(
                "run %s: its registration (process %s on %s) was killed part-way; marked FAILED",
                run_id, tags.get(RunTag.PID), tags.get(RunTag.HOST),
            )  # fmt: skip
            failed.append(run_id)
        return failed

    # The steps below are separate methods so each can be replaced in a test to inject a failure.
    def _resolve_run(self, run_id: str | None) -> tuple[str, bool]:
        """The run to log into, and whether this call started it."""
        if run_id:
            with mlflow_errors(f"run_id {run_id!r}"):
                self._client.get_run(run_id)
            return run_id, False
        import mlflow

        active = mlflow.active_run()
        if active is not None:
            return active.info.run_id, False
        with mlflow_errors(f"starting a run in experiment {DEFAULT_EXPERIMENT!r}"):
            experiment_id = self._experiment_id(DEFAULT_EXPERIMENT)
            return self._client.create_run(experiment_id).info.run_id, True

    def _mark_run(self, run_id: str, state: str, registration_id: str | None = None) -> None:
        """Say on the run where the registration stands (and, when it starts, which process on which host runs it
        and with which registration id)."""
        from mlflow.entities import RunTag as MlflowRunTag

        tags = {RunTag.STATE: state}
        if state == "uploading":
            tags |= {RunTag.HOST: socket.gethostname(), RunTag.PID: str(os.getpid())}
            tags |= {Tag.REGISTRATION_ID: registration_id} if registration_id else {}
        with mlflow_errors(f"tagging run {run_id} ({RunTag.STATE} = {state})"):
            self._client.log_batch(run_id, tags=[MlflowRunTag(k, v) for k, v in tags.items()])

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
        with mlflow_errors(f"uploading {str(adapter_dir)!r} to run {run_id}"):
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
        with mlflow_errors(f"logging metrics {sorted(metrics)} to run {run_id}"):
            for start in range(0, len(batch), 1000):
                self._client.log_batch(run_id, metrics=batch[start : start + 1000])

    def _verify_upload(self, run_id: str, checksums: Mapping[str, str]) -> None:
        """Download ``adapter/`` back and compare every file's sha256 with the local one."""
        with tempfile.TemporaryDirectory() as tmp:
            with mlflow_errors(f"downloading {ADAPTER_ARTIFACT}/ of run {run_id} to check the upload"):
                local = Path(self._client.download_artifacts(run_id, ADAPTER_ARTIFACT, tmp))
            problem = checksum_problem(sha256_folder(local), checksums)
        if problem:
            raise RegistryError("CORRUPTED_UPLOAD", f"upload check of run {run_id} failed: {problem}")

    def _ensure_registered_model(self, model_name: str) -> bool:
        """Create the registered model if missing; True when this call created it."""
        from mlflow.exceptions import MlflowException

        with mlflow_errors(f"registered model {model_name!r}"):
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
        with mlflow_errors(f"creating a version of {model_name!r} from run {run_id}"):
            source = f"{self._client.get_run(run_id).info.artifact_uri.rstrip('/')}/{ADAPTER_ARTIFACT}"
            created = self._client.create_model_version(
                model_name, source=source, run_id=run_id, tags=dict(tags), description=description or None
            )
        return str(created.version)

    def _finalise_version(self, model_name: str, version: str) -> None:
        with mlflow_errors(f"setting alias candidate on {model_name}/{version}"):
            self._client.set_registered_model_alias(model_name, "candidate", version)

    def _undo_registration(self, model_name: str, version: str | None, created_model: bool) -> None:
        with contextlib.suppress(Exception):
            if version is not None:
                self._client.delete_model_version(model_name, version)
                with self.writer_lock(model_name):
                    self._changed(model_name, int(version))
        with contextlib.suppress(Exception):
            if created_model and not self._client.search_model_versions(f"name = '{quote(model_name)}'"):
                self._client.delete_registered_model(model_name)

    # -------------------------------------------------------------------------------------- read
    def model_exists(self, name: str) -> bool:
        return lookup(lambda: self._ops.get_registered_model(name), f"adapter {name!r}") is not None

    def _require_model(self, name: str) -> None:
        if not self.model_exists(name):
            raise RegistryError("NOT_FOUND", f"adapter {name!r} is not registered")

    def get_version(self, name: str, version: int | str) -> AdapterVersion:
        """One version by number."""
        if not str(version).isdigit():
            raise RegistryError("INVALID_INPUT", f"version {version!r} of {name!r} is not a positive number")
        mv = lookup(lambda: self._ops.get_model_version(name, str(version)), f"{name}/{version}")
        if mv is None:
            self._require_model(name)
            raise RegistryError("NOT_FOUND", f"adapter {name!r} has no version {version}")
        return AdapterVersion.from_model_version(mv)

    def holder(self, name: str, stage: str, known_model: bool = False) -> AdapterVersion | None:
        """The version that holds ``stage`` (an alias) for adapter ``name``, or None (``known_model``: the caller
        knows the adapter exists; else a missing one is an error)."""
        mv = lookup(
            lambda: self._ops.get_model_version_by_alias(name, stage),
            f"{name}@{stage}",
            missing=("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"),
        )
        if mv is None:
            if not known_model:
                self._require_model(name)
            return None
        return AdapterVersion.from_model_version(mv)

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
        shows (stage, base, method, task, metrics: the SQL path on sqlite, the version summaries on a server);
        use ``get_version`` for everything.
        """
        if stage is not None and stage not in STAGES:
            raise RegistryError(
                "INVALID_INPUT", f"stage {stage!r} does not exist; use one of {', '.join(STAGES)}"
            )
        where = VersionFilter(name or None)
        if method:
            where = where.with_tag(Tag.METHOD, method)
        for key, value in (tag_equals or {}).items():
            where = where.with_tag(key, value)
        if base_model and self._from_summaries(where, summary):  # one read of every summary, either key
            versions = [
                v for v in self._search(where, summary) if base_model in (v.base_id, v.base_fingerprint)
            ]
        elif base_model:
            found = {}
            for key in (Tag.BASE_ID, Tag.BASE_FINGERPRINT):
                for v in self._search(where.with_tag(key, base_model), summary):
                    found[(v.name, v.version)] = v
            versions = list(found.values())
        else:
            versions = self._search(where, summary)
        if stage:  # a stage is an alias (or its absence), read with each version
            versions = [v for v in versions if v.stage == stage]
        return sorted(versions, key=lambda v: (v.name, -v.version))

    def _from_summaries(self, where: VersionFilter, summary_only: bool) -> bool:
        return summary_only and summary_answers(where)

    def _search(self, where: VersionFilter, summary_only: bool = False) -> list[AdapterVersion]:
        """A listing (``summary_only``) the adapters' summaries answer: from them (one search of the registered
        models; an adapter whose summary is missing or behind is read in full); any other search on a sqlite file:
        the SQL fast path; elsewhere MLflow's search. Writer tickets are no adapter versions."""
        if self._from_summaries(where, summary_only):
            with mlflow_errors(f"listing versions where {where.mlflow_filter() or 'anything'}"):
                found = search_summaries(self._ops, where, fallback=self._search)
        elif isinstance(self._fast, SqliteClient):
            with mlflow_errors("reading the sqlite registry"):
                found = search_sqlite(self._fast.conn, where, summary_only)
        else:
            with mlflow_errors(f"searching versions where {where.mlflow_filter() or 'anything'}"):
                found = search_mlflow(self._ops, where)
        return [v for v in found if v.name != LOCK_MODEL]

    def list_models(self) -> list[str]:
        with mlflow_errors("listing registered models"):
            names: list[str] = []
            token = None
            while True:
                page = self._ops.search_registered_models(max_results=1000, page_token=token)
                names.extend(m.name for m in page if m.name != LOCK_MODEL)
                token = page.token
                if not token:
                    return sorted(names)

    # -------------------------------------------------------------------------------------- stages
    def set_stage(self, name: str, version: int, stage: str, current: AdapterVersion | None = None) -> None:
        """Give ``version`` the stage: the alias of the same name (moved from its holder), or for ``archived`` the
        ``ar.archived`` tag (a replaced version holds no alias). A version given an alias stage is no longer
        archived. ``current``: the version as the caller just read it (saves reading it again)."""
        if stage not in STAGES:
            raise RegistryError(
                "INVALID_INPUT", f"stage {stage!r} does not exist; use one of {', '.join(STAGES)}"
            )
        if current is not None and (current.name, current.version) != (name, int(version)):
            current = None
        with mlflow_errors(f"moving {name}/{version} to {stage}"), self.writer_lock(name):
            if stage == "archived":
                self._ops.set_model_version_tag(name, str(version), Tag.ARCHIVED, "true")
                now = (
                    None if current is None else replace(current, tags={**current.tags, Tag.ARCHIVED: "true"})
                )
                self._changed(name, version, now)
                return
            tags = (
                current.tags
                if current is not None
                else self._ops.get_model_version(name, str(version)).tags or {}
            )
            stale = [
                k
                for k in (Tag.ARCHIVED, Tag.STAGE)
                if k in tags and (k == Tag.ARCHIVED or tags[k] == "archived")
            ]
            # the tags first: deleting one needs MANAGE under basic-auth, setting the alias only EDIT, so a refused
            # step leaves nothing moved (a legacy ar.stage mirror saying archived would keep saying it)
            for key in stale:
                self._ops.delete_model_version_tag(name, str(version), key)
            if stale:
                kept = {k: v for k, v in tags.items() if k not in stale}
                self._changed(name, version, None if current is None else replace(current, tags=kept))
            self._ops.set_registered_model_alias(name, stage, str(version))

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point a non-stage alias (``canary``) at ``version``; stages move through ``set_stage``."""
        if alias in STAGES:
            raise RegistryError("INVALID_INPUT", f"{alias!r} is a stage: move it with set_stage")
        with (
            mlflow_errors(f"pointing alias {alias!r} of {name!r} at version {version}"),
            self.writer_lock(name),
        ):
            self._ops.set_registered_model_alias(name, alias, str(version))

    def drop_alias(self, name: str, stage: str) -> None:
        with mlflow_errors(f"removing alias {stage!r} of {name!r}"):
            self._ops.delete_registered_model_alias(name, stage)

    def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        with mlflow_errors(f"tagging {name}/{version} with {key}"), self.writer_lock(name):
            self._ops.set_model_version_tag(name, str(version), key, value)
            if key in summary.KEPT or key in summary.ARCHIVED_KEYS or key.startswith(Tag.metric("")):
                self._changed(name, version)

    # -------------------------------------------------------------------------------------- webhooks
    def create_webhook(self, name: str, url: str, secret: str) -> str:
        """Register a signed webhook for stage-alias moves (MLflow >= 3.3 on a SQL backend); its id, or "" with a
        logged warning where the store cannot (a local store, no permission): callers then rely on polling."""
        import logging

        try:
            with mlflow_errors(f"registering webhook {name!r} -> {url}"):
                events: list[Any] = list(ALIAS_EVENTS)
                hook = self._client.create_webhook(name=name, url=url, events=events, secret=secret)
                return str(hook.webhook_id)
        except RegistryError as exc:
            logging.getLogger(__name__).warning("no registry webhook (polling only): %s", exc.message)
            return ""

    def delete_webhook(self, webhook_id: str) -> None:
        with mlflow_errors(f"deleting webhook {webhook_id}"):
            self._client.delete_webhook(webhook_id)

    # -------------------------------------------------------------------------------------- the server's app
    def server_app(self) -> dict[str, Any] | None:
        """What the tracking server's adapter-registry auth app (``registry.auth_app``) says of itself: the user it
        authenticated, its promotion policy, that it signs the audit trail. None where no such app runs (a sqlite
        file, a server without it). Asked once per store."""
        if self._app is False:
            remote = (
                self.tracking_uri.startswith(("http://", "https://"))
                and self._registry_uri == self.tracking_uri
            )
            self._app = (
                self._app_request("GET", "server", {}, f"asking {self!r} for its auth app")
                if remote
                else None
            )
        return self._app if isinstance(self._app, dict) else None

    def app_call(self, method: str, endpoint: str, body: dict[str, Any], doing: str) -> dict[str, Any]:
        """A call to the server's auth app (``/api/2.0/adapter-registry/<endpoint>``); its JSON answer."""
        answer = self._app_request(method, endpoint, body, doing)
        if answer is None:
            raise RegistryError(
                "BACKEND",
                f"{doing}: the tracking server does not run the adapter-registry auth app (any more)",
            )
        return answer

    def _app_request(
        self, method: str, endpoint: str, body: dict[str, Any], doing: str
    ) -> dict[str, Any] | None:
        """None when the server answers 404 (no auth app of ours there)."""
        from adapter_registry.registry.rest import APP_API, RestClient

        with mlflow_errors(doing):
            if isinstance(self._fast, RestClient):
                try:
                    return self._fast.call(method, endpoint, body, api=APP_API)
                except Exception as exc:
                    if error_code(exc) == "ENDPOINT_NOT_FOUND":
                        return None
                    raise
            # an MLflow auth plugin this project's client cannot stand in for: MLflow's own transport
            from mlflow.utils.credentials import get_default_host_creds
            from mlflow.utils.rest_utils import http_request, verify_rest_response

            path = f"{APP_API}/{endpoint}"
            kwargs = {"params": body} if method == "GET" else {"json": body}
            response = http_request(get_default_host_creds(self.tracking_uri), path, method, **kwargs)
            if response.status_code == 404 and "error_code" not in response.text:
                return None
            return dict(verify_rest_response(response, path).json())

    # -------------------------------------------------------------------------------------- audit runs
    def append_audit_run(self, run_name: str, tags: Mapping[str, str]) -> str:
        """Write one audit event as a new, finished run in the audit experiment. Never updates a run."""
        with mlflow_errors(f"writing audit event {run_name!r}"):
            experiment_id = self._audit_experiment(create=True)
            assert experiment_id is not None
            run = self._ops.create_run(experiment_id, tags=dict(tags), run_name=run_name)
            self._ops.set_terminated(run.info.run_id, status="FINISHED")
            return str(run.info.run_id)

    def _audit_experiment(self, create: bool) -> str | None:
        if self._audit_id is not None:
            return self._audit_id
        experiment = self._ops.get_experiment_by_name(AUDIT_EXPERIMENT)
        if experiment is not None:
            self._audit_id = str(experiment.experiment_id)
            return self._audit_id
        if not create:
            return None
        if getattr(self._fast, "create_experiment", None) is None:
            return self._experiment_id(AUDIT_EXPERIMENT)  # MLflow's client: it sets the artifact location
        try:
            return str(self._fast.create_experiment(AUDIT_EXPERIMENT))
        except Exception as exc:
            if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
            return self._audit_experiment(create=False)  # created meanwhile by another writer

    def audit_runs(self, model: str | None) -> list[tuple[dict[str, str], bool]]:
        """Tags of every audit run of ``model`` (of every model when None; deleted ones too), with a flag that
        says it was deleted."""
        where = f"tags.`ar.audit.model` = '{quote(model)}'" if model is not None else ""
        with mlflow_errors(f"reading the audit trail of {model or 'every adapter'!r}"):
            experiment_id = self._audit_experiment(create=False)
            if experiment_id is None:
                return []
            out: list[Any] = []
            token = None
            while True:
                page = self._ops.search_runs(
                    [experiment_id], filter_string=where, run_view_type=3, max_results=1000, page_token=token
                )  # run_view_type 3: MLflow's ViewType.ALL (deleted runs too)
                out.extend((dict(r.data.tags), r.info.lifecycle_stage == "deleted") for r in page)
                token = page.token
                if not token:
                    return out

    # -------------------------------------------------------------------------------------- fleet runs
    def fleet_join(self, run_name: str, tags: Mapping[str, str]) -> str:
        """Start a replica's run in the fleet experiment; its id (the heartbeats rewrite its tags)."""
        with mlflow_errors(f"announcing replica {run_name!r} in {FLEET_EXPERIMENT!r}"):
            run = self._client.create_run(
                self._experiment_id(FLEET_EXPERIMENT), tags=dict(tags), run_name=run_name
            )
            return str(run.info.run_id)

    def fleet_beat(self, run_id: str, tags: Mapping[str, str], removed: Iterable[str] = ()) -> None:
        """One heartbeat: rewrite ``tags`` of the replica's run in one call, delete the ``removed`` keys."""
        from mlflow.entities import RunTag as MlflowRunTag

        with mlflow_errors(f"heartbeat of fleet run {run_id}"):
            self._client.log_batch(run_id, tags=[MlflowRunTag(k, v) for k, v in tags.items()])
            for key in removed:
                self._client.delete_tag(run_id, key)

    def fleet_leave(self, run_id: str, tags: Mapping[str, str]) -> None:
        """The replica stops: a last heartbeat, and its run ends."""
        self.fleet_beat(run_id, tags)
        with mlflow_errors(f"ending fleet run {run_id}"):
            self._client.set_terminated(run_id, status="FINISHED")

    def fleet_runs(self, include_ended: bool = False) -> list[dict[str, Any]]:
        """The replicas' runs (running ones; with ``include_ended`` the ended ones too, newest first): run id,
        status and tags."""
        with mlflow_errors(f"reading the fleet ({FLEET_EXPERIMENT!r})"):
            experiment = self._ops.get_experiment_by_name(FLEET_EXPERIMENT)
            if experiment is None:
                return []
            out: list[dict[str, Any]] = []
            token = None
            while True:
                page = self._ops.search_runs(
                    [str(experiment.experiment_id)], max_results=1000, page_token=token
                )
                out.extend(
                    {"run_id": r.info.run_id, "status": r.info.status, "tags": dict(r.data.tags)}
                    for r in page
                    if include_ended or r.info.status == "RUNNING"
                )
                token = page.token
                if not token:
                    return out

    # -------------------------------------------------------------------------------------- files
    def download_adapter(self, version: AdapterVersion, dst: Path) -> Path:
        """Download the version's adapter files into ``dst`` (a fresh folder) and return the folder.

        Without mlflow where the source allows: a local folder (a sqlite store's artifacts) is copied, links kept
        as links; ``mlflow-artifacts:`` on this store's server comes through its REST API (``registry.rest``).
        Anything else (an object store a client reaches directly, ``runs:/`` ...) through MLflow's client."""
        with mlflow_errors(f"downloading the adapter of {version.ref}"):
            light = self._light_download(version.source, Path(dst))
            if light is not None:
                return light
            from mlflow.artifacts import download_artifacts

            return Path(
                download_artifacts(
                    artifact_uri=version.source, dst_path=str(dst), tracking_uri=self.tracking_uri
                )
            )

    def _light_download(self, source: str, dst: Path) -> Path | None:
        from urllib.parse import unquote, urlparse

        from adapter_registry.registry.rest import RestClient

        parsed = urlparse(source)
        if parsed.scheme in ("", "file") and not parsed.netloc:
            folder = Path(unquote(parsed.path) if parsed.scheme else source)
            if not folder.is_absolute() or not folder.is_dir():
                return None
            return Path(shutil.copytree(folder, dst / folder.name, symlinks=True))
        if parsed.scheme == "mlflow-artifacts" and isinstance(self._fast, RestClient):
            return self._fast.download_artifacts(source, dst)
        return None

    def files_problem(self, version: AdapterVersion) -> str | None:
        """Download the version's files into a temporary folder and check every one against its registered sha256,
        as ``pull`` does: the first problem (a file missing, changed or not registered; files that cannot be
        downloaded; no checksums registered), or None when every file is as registered. A server that cannot be
        reached or refuses access raises instead."""
        if not version.checksums:
            return "no checksums are registered for its files"
        with tempfile.TemporaryDirectory(prefix="adapter-verify-") as tmp:
            try:
                folder = self.download_adapter(version, Path(tmp))
            except RegistryError as exc:
                if exc.code in ("UNREACHABLE", "PERMISSION_DENIED", "UNAUTHENTICATED"):
                    raise
                return f"its files cannot be downloaded: {exc.message}"
            return _files_problem(folder, version.checksums)

    def pull(self, ref: str, dest: Path) -> AdapterVersion:
        """Download ``ref``'s adapter into ``dest`` after checking every file against the registered sha256.

        The files are downloaded beside ``dest`` first; on any mismatch nothing is left in ``dest``. A ``dest`` that
        is a symbolic link, or a download holding one, is refused: pull never writes where a link points.
        """
        dest = Path(dest)
        if dest.is_symlink():
            raise RegistryError(
                "INVALID_INPUT",
                f"destination {str(dest)!r} is a symbolic link. Fix: pull into a real folder (pull never writes "
                "where a link points)",
            )
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
            problem = _files_problem(folder, expected)
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
        with mlflow_errors(f"run {run_id!r}"):
            run = self._ops.get_run(run_id)
        return {
            "run_id": run_id,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "artifact_uri": run.info.artifact_uri,
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
        }
