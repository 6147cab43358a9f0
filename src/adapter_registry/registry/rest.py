"""The store's calls over MLflow's REST API with ``requests``: no mlflow import, one HTTP request per call.

A subset of ``MlflowClient``'s methods with the same names and arguments, answering ``registry.records`` records
and raising ``BackendError``. Credentials as MLflow's client reads them: ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` (or ``~/.mlflow/credentials``), ``MLFLOW_TRACKING_TOKEN``, and the TLS variables
``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH``, ``MLFLOW_TRACKING_CLIENT_CERT_PATH``.
:func:`usable` says when this client cannot stand in for MLflow's (a custom auth plugin, AWS SigV4): the store
then uses MLflow's client for everything. Endpoints: MLflow's REST API reference (``/api/2.0/mlflow/...``).
"""

from __future__ import annotations

import configparser
import os
import time
from pathlib import Path, PurePosixPath
from typing import Any

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

API = "/api/2.0/mlflow"
APP_API = (
    "/api/2.0/adapter-registry"  # the routes of the project's auth app on the server (registry.auth_app)
)


def usable() -> bool:
    """False where MLflow's client would authenticate in a way this one does not (auth plugins, SigV4)."""
    return not (os.environ.get("MLFLOW_TRACKING_AUTH") or os.environ.get("MLFLOW_TRACKING_AWS_SIGV4", "").lower()
                in ("1", "true"))  # fmt: skip


def credentials() -> tuple[str | None, str | None]:
    """(username, password) from the environment, else from ``~/.mlflow/credentials`` (as MLflow reads them)."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user or password:
        return user, password
    path = Path(os.environ.get("MLFLOW_CREDENTIALS_PATH") or Path.home() / ".mlflow" / "credentials")
    if path.is_file():
        config = configparser.ConfigParser()
        config.read(path)
        if config.has_section("mlflow"):
            section = config["mlflow"]
            return section.get("mlflow_tracking_username"), section.get("mlflow_tracking_password")
    return None, None


def _version(data: dict[str, Any]) -> VersionRecord:
    return VersionRecord(
        name=data["name"], version=str(data["version"]), tags={t["key"]: t.get("value", "") for t in data.get("tags", [])},
        aliases=list(data.get("aliases", [])), run_id=data.get("run_id", ""), source=data.get("source", ""),
        creation_timestamp=int(data.get("creation_timestamp", 0)), description=data.get("description", ""),
    )  # fmt: skip


def _search_body(filter_string: str | None, max_results: int, page_token: str | None) -> dict[str, Any]:
    """The body of one page of MLflow's registered-model or model-version search."""
    body: dict[str, Any] = {"max_results": max_results}
    if filter_string:
        body["filter"] = filter_string
    if page_token:
        body["page_token"] = page_token
    return body


def _model(data: dict[str, Any]) -> ModelRecord:
    return ModelRecord(
        name=data["name"], tags={t["key"]: t.get("value", "") for t in data.get("tags", [])},
        aliases={a["alias"]: str(a["version"]) for a in data.get("aliases", [])},
        latest_versions=[_version(v) for v in data.get("latest_versions", [])],
        creation_timestamp=int(data.get("creation_timestamp", 0)),
    )  # fmt: skip


def _run(data: dict[str, Any]) -> RunRecord:
    info, body = data["info"], data.get("data", {})
    return RunRecord(
        RunInfoRecord(info["run_id"], str(info["experiment_id"]), info.get("status", ""), info.get("artifact_uri", ""),
                      info.get("lifecycle_stage", "active")),
        RunDataRecord({t["key"]: t.get("value", "") for t in body.get("tags", [])},
                      {p["key"]: p.get("value", "") for p in body.get("params", [])},
                      {m["key"]: float(m["value"]) for m in body.get("metrics", [])}),
    )  # fmt: skip


class RestClient:
    """MLflow's REST API at ``tracking_uri`` (``http://`` or ``https://``)."""

    def __init__(self, tracking_uri: str, timeout: float | None = None) -> None:
        import requests

        self.tracking_uri = tracking_uri.rstrip("/")
        self.timeout = timeout or float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or 120)
        self.session = requests.Session()
        self._no_summaries = False  # the server answered that it has no listing route
        self.user, password = credentials()
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if self.user:
            self.session.auth = (self.user, password or "")
        elif token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("1", "true"):
            self.session.verify = False
        elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            self.session.verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
        if os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
            self.session.cert = os.environ["MLFLOW_TRACKING_CLIENT_CERT_PATH"]

    # ---------------------------------------------------------------------------------------- transport
    def call(
        self, method: str, endpoint: str, body: dict[str, Any] | None = None, api: str = API
    ) -> dict[str, Any]:
        """One request to ``<api>/<endpoint>``; the JSON answer, or BackendError with MLflow's error code (or ours
        for HTTP failures: ``ENDPOINT_NOT_FOUND`` for a 404 that is no MLflow error).

        As MLflow's client: ``MLFLOW_HTTP_REQUEST_TIMEOUT`` per try, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` more tries
        of a read (a write is sent once) after a dropped connection or a 502/503/504, sleeping
        ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` × 2^n s between them (the CLI sets all three from
        ``ADAPTER_REGISTRY_TIMEOUT``). A server that cannot be reached raises ``requests``' own error, which
        ``registry.errors.mlflow_errors`` reports as one ``unreachable`` line."""
        import requests

        url = f"{self.tracking_uri}{api}/{endpoint}"
        retries = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") or 2) if method == "GET" else 0
        backoff = float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR") or 1)
        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                if method == "GET":
                    response = self.session.get(url, params=body, timeout=self.timeout)
                else:
                    response = self.session.request(method, url, json=body or {}, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout):
                if last:
                    raise
                time.sleep(backoff * 2**attempt)
                continue
            if response.status_code in (502, 503, 504) and not last:
                time.sleep(backoff * 2**attempt)
                continue
            return self._answer(response)
        raise AssertionError("unreachable")

    def _answer(self, response: Any) -> dict[str, Any]:
        if response.status_code == 401:
            who = f"user {self.user!r}" if self.user else "a request without credentials"
            raise BackendError(
                "UNAUTHENTICATED",
                f"tracking server {self.tracking_uri} refused {who} (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to a user of that server",
            )
        try:
            data = response.json() if response.content else {}
        except ValueError:
            data = None
        if response.status_code >= 400 or not isinstance(data, dict):
            if isinstance(data, dict) and data.get("error_code"):
                raise BackendError(
                    str(data["error_code"]), str(data.get("message", "")).strip() or response.reason
                )
            text = response.text.strip().splitlines()[0][:300] if response.text.strip() else response.reason
            code = {403: "PERMISSION_DENIED", 404: "ENDPOINT_NOT_FOUND"}.get(response.status_code, "BACKEND")
            raise BackendError(code, f"HTTP {response.status_code} from {response.url.split('?')[0]}: {text}")
        return data

    # ---------------------------------------------------------------------------------------- registered models
    def get_registered_model(self, name: str) -> ModelRecord:
        return _model(self.call("GET", "registered-models/get", {"name": name})["registered_model"])

    def search_registered_models(
        self, filter_string: str | None = None, max_results: int = 1000, page_token: str | None = None
    ) -> Page:
        body = _search_body(filter_string, max_results, page_token)
        data = self.call("GET", "registered-models/search", body)
        return Page([_model(m) for m in data.get("registered_models", [])], data.get("next_page_token"))

    def create_registered_model(self, name: str, tags: dict[str, str] | None = None) -> ModelRecord:
        body = {"name": name, "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}
        return _model(self.call("POST", "registered-models/create", body)["registered_model"])

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self.call("POST", "registered-models/set-tag", {"name": name, "key": key, "value": value})

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        self.call("DELETE", "registered-models/delete-tag", {"name": name, "key": key})

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self.call("POST", "registered-models/alias", {"name": name, "alias": alias, "version": str(version)})

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        self.call("DELETE", "registered-models/alias", {"name": name, "alias": alias})

    def summaries(self, name: str | None = None) -> list[ModelRecord] | None:
        """Every registered model's version summary tags, aliases and newest version (in ``latest_versions``)
        through the auth app's listing route (``registry.server_listing``): one request a 1,000 models. None
        where the server does not answer that route (no adapter-registry app there): use MLflow's search."""
        if self._no_summaries:
            return None
        out: list[ModelRecord] = []
        token = None
        while True:
            body = {"max_results": 1000, **({"name": name} if name else {}),
                    **({"page_token": token} if token else {})}  # fmt: skip
            try:
                data = self.call("GET", "summaries", body, api=APP_API)
            except BackendError as exc:
                if exc.error_code in ("ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED"):
                    self._no_summaries = True
                    return None
                raise
            for m in data.get("models", []):
                top = m.get("top")
                newest = [] if top is None else [VersionRecord(m["name"], str(top), {}, [])]
                out.append(ModelRecord(name=m["name"], tags=dict(m.get("tags") or {}),
                                       aliases={k: str(v) for k, v in (m.get("aliases") or {}).items()},
                                       latest_versions=newest))  # fmt: skip
            token = data.get("next_page_token")
            if not token:
                return out

    # ---------------------------------------------------------------------------------------- versions
    def get_model_version(self, name: str, version: str) -> VersionRecord:
        return _version(
            self.call("GET", "model-versions/get", {"name": name, "version": str(version)})["model_version"]
        )

    def get_model_version_by_alias(self, name: str, alias: str) -> VersionRecord:
        return _version(
            self.call("GET", "registered-models/alias", {"name": name, "alias": alias})["model_version"]
        )

    def search_model_versions(
        self, filter_string: str | None = None, max_results: int = 10_000, page_token: str | None = None
    ) -> Page:
        body = _search_body(filter_string, max_results, page_token)
        data = self.call("GET", "model-versions/search", body)
        return Page([_version(v) for v in data.get("model_versions", [])], data.get("next_page_token"))

    def create_model_version(
        self, name: str, source: str, run_id: str | None = None, tags: dict[str, str] | None = None,
        description: str | None = None,
    ) -> VersionRecord:  # fmt: skip
        body: dict[str, Any] = {"name": name, "source": source,
                                "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}  # fmt: skip
        if run_id:
            body["run_id"] = run_id
        if description:
            body["description"] = description
        return _version(self.call("POST", "model-versions/create", body)["model_version"])

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.call(
            "POST",
            "model-versions/set-tag",
            {"name": name, "version": str(version), "key": key, "value": value},
        )

    def delete_model_version_tag(self, name: str, version: str, key: str) -> None:
        self.call("DELETE", "model-versions/delete-tag", {"name": name, "version": str(version), "key": key})

    # ---------------------------------------------------------------------------------------- runs
    def get_experiment_by_name(self, name: str) -> ExperimentRecord | None:
        try:
            data = self.call("GET", "experiments/get-by-name", {"experiment_name": name})["experiment"]
        except BackendError as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return ExperimentRecord(
            str(data["experiment_id"]), data["name"], data.get("lifecycle_stage", "active")
        )

    def create_experiment(self, name: str) -> str:
        return str(self.call("POST", "experiments/create", {"name": name})["experiment_id"])

    def create_run(
        self, experiment_id: str, tags: dict[str, str] | None = None, run_name: str | None = None
    ) -> RunRecord:
        body: dict[str, Any] = {
            "experiment_id": str(experiment_id), "start_time": int(time.time() * 1000),
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        }  # fmt: skip
        if run_name:
            body["run_name"] = run_name
        return _run(self.call("POST", "runs/create", body)["run"])

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        self.call(
            "POST", "runs/update", {"run_id": run_id, "status": status, "end_time": int(time.time() * 1000)}
        )

    def get_run(self, run_id: str) -> RunRecord:
        return _run(self.call("GET", "runs/get", {"run_id": run_id})["run"])

    def search_runs(
        self, experiment_ids: list[str], filter_string: str = "", run_view_type: int = 1, max_results: int = 1000,
        page_token: str | None = None,
    ) -> Page:  # fmt: skip
        views = {1: "ACTIVE_ONLY", 2: "DELETED_ONLY", 3: "ALL"}
        body: dict[str, Any] = {"experiment_ids": [str(e) for e in experiment_ids], "filter": filter_string,
                                "run_view_type": views.get(int(run_view_type), "ALL"), "max_results": max_results}  # fmt: skip
        if page_token:
            body["page_token"] = page_token
        data = self.call("POST", "runs/search", body)
        return Page([_run(r) for r in data.get("runs", [])], data.get("next_page_token"))

    # ---------------------------------------------------------------------------------------- artifacts
    def download_artifacts(self, source: str, dst: Path) -> Path | None:
        """An ``mlflow-artifacts:`` folder served by this server, downloaded into ``dst/<its name>`` (MLflow's
        artifact proxy: ``GET .../mlflow-artifacts/artifacts?path=`` lists, ``GET .../artifacts/<path>`` sends a
        file); None when ``source`` names another server (MLflow's client resolves that)."""
        from urllib.parse import urlparse

        parsed = urlparse(source)
        if (
            parsed.netloc
            and parsed.netloc.rpartition("@")[2] != urlparse(self.tracking_uri).netloc.rpartition("@")[2]
        ):
            return None
        root = parsed.path.strip("/")
        base = f"{self.tracking_uri}/api/2.0/mlflow-artifacts/artifacts"
        target = Path(dst) / PurePosixPath(root).name
        files: list[PurePosixPath] = []
        pending = [root]
        while pending:
            folder = pending.pop()
            listed = self._artifact_get(base, {"path": folder}).json().get("files", [])
            for entry in listed:
                relative = PurePosixPath(folder, entry["path"])
                if ".." in PurePosixPath(entry["path"]).parts or PurePosixPath(entry["path"]).is_absolute():
                    raise BackendError(
                        "INVALID_PARAMETER_VALUE", f"artifact path {entry['path']!r} is not safe"
                    )
                if entry.get("is_dir"):
                    pending.append(str(relative))
                else:
                    files.append(relative)

        def fetch(relative: PurePosixPath) -> None:
            local = target / relative.relative_to(root)
            local.parent.mkdir(parents=True, exist_ok=True)
            with (
                self._artifact_get(f"{base}/{relative}", None, stream=True) as response,
                local.open("wb") as out,
            ):
                for chunk in response.iter_content(chunk_size=1 << 20):
                    out.write(chunk)

        if len(files) > 1:  # a few at once: an adapter is a handful of files, each a round trip
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=4, thread_name_prefix="artifact-get") as pool:
                list(pool.map(fetch, files))
        else:
            for relative in files:
                fetch(relative)
        target.mkdir(parents=True, exist_ok=True)  # an empty folder is what MLflow's client leaves too
        return target

    def _artifact_get(self, url: str, params: dict[str, str] | None, stream: bool = False) -> Any:
        response = self.session.get(url, params=params, timeout=self.timeout, stream=stream)
        if response.status_code >= 400:
            self._answer(response)  # raises the error MLflow answered
        return response
