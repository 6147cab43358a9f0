"""The tracking server's side of the registry: an MLflow auth app, ``mlflow server --app-name adapter-registry``.

MLflow's basic-auth app (users, READ/EDIT/MANAGE per experiment and registered model) plus two things a client
cannot be trusted with, both taken from the server's own configuration, never from a request, and a fast listing:

1. **Protected stages.** A request that would move a stage alias the promotion policy restricts (its
   ``allowed_users`` is a list) is refused with HTTP 403 unless the authenticated user is on that list: setting
   or deleting the alias (``/mlflow/registered-models/alias``: the REST API and the UI's alias editor, which
   calls the same route under ``/ajax-api``), deleting a version or a registered model that holds it, renaming
   that model. The ``canary`` alias takes production traffic, so production's rule guards it too. The policy
   applies to MLflow admins too (they can still reset any user's password: they are
   trusted with the server). GraphQL has no mutation that moves an alias, and MLflow's legacy
   ``transition-stage`` moves no alias. Every refusal is logged and recorded in the audit trail (``refused``).
2. **The audit trail is written and signed here** (``registry.audit``). Clients send an event to
   ``POST /api/2.0/adapter-registry/audit/append``; the server sets its actor (the user it authenticated), its
   time and sequence number, checks a promotion against the policy and the alias it claims to have moved,
   signs it with a key only this host holds (HMAC-SHA256, chained), writes the run itself and records the
   chain's head beside the key. ``GET .../audit/trails`` answers the trails with every MAC and head checked,
   so the key never leaves the server. No request may write the audit experiment (create, tag, delete, restore
   or rename its runs or the experiment), admins included.
3. **A listing in one request** (``registry.server_listing``): ``GET /api/2.0/adapter-registry/summaries``
   answers every adapter's version summary, aliases and newest version from a few SQL queries, where MLflow's
   ``search_registered_models`` builds every model's newest version with all its tags.

Configuration: a section of basic-auth's ini (the file ``MLFLOW_AUTH_CONFIG_PATH`` names), on the server host::

    [adapter_registry]
    policy = /srv/team/promotion_policy.yml   # re-read when it changes; unreadable: protected moves refused
    audit_key = /srv/team/audit.key           # 64 hex characters, mode 0600 (a key others may read is refused)
    # audit_heads = /srv/team/audit.heads.json  (default: beside the key)

``adapter-registry stack up`` writes all three. The app refuses to start without them. Appends take a lock file
beside the heads: one server host (any number of workers) per registry.

What it does not cover: an administrator of the database or of the host (who can also read the key), MLflow
admins resetting a permitted user's password, and the gate results inside an event (the client's report; only
a permitted user can record a placing event). Artifacts of audit runs are not guarded (events live in tags).
"""

from __future__ import annotations

import configparser
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_registry.registry.audit import AuditTrail, Head, Runs, link, signed_chain
from adapter_registry.registry.entities import (
    AUDIT_EXPERIMENT,
    AuditTag,
    RegistryError,
    StageChange,
    stage_of,
)
from adapter_registry.registry.policy import PromotionPolicy, load_policy
from adapter_registry.registry.search import quote
from adapter_registry.registry.stages import CANARY_ENDS, CANARY_START

if TYPE_CHECKING:
    from flask import Flask, Response

APP_NAME = "adapter-registry"  # mlflow server --app-name adapter-registry (pyproject: [project.entry-points."mlflow.app"])
SECTION = "adapter_registry"
ACTIONS = ("promote", "rollback", "retire", "refused", CANARY_START, *CANARY_ENDS)
log = logging.getLogger("adapter_registry.auth_app")


class AppConfigError(Exception):
    """The server's configuration of the app is missing or wrong; the message says what to fix."""


# ------------------------------------------------------------------------------------------------ configuration
def new_key(path: Path) -> None:
    """Write a fresh audit key to ``path`` (mode 0600) unless one is there."""
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")


def config_section(policy: Path, key: Path) -> str:
    """The ``[adapter_registry]`` section of basic-auth's ini for these files."""
    return f"[{SECTION}]\npolicy = {policy}\naudit_key = {key}\n"


@dataclass(frozen=True)
class Settings:
    policy_path: Path
    key: bytes
    heads_path: Path

    @classmethod
    def load(cls, config_path: str | None = None) -> Settings:
        """Read the ``[adapter_registry]`` section of basic-auth's ini and check the files it names."""
        chosen = config_path or os.environ.get("MLFLOW_AUTH_CONFIG_PATH")
        example = config_section(Path("/srv/team/promotion_policy.yml"), Path("/srv/team/audit.key"))
        if not chosen or not Path(chosen).is_file():
            raise AppConfigError(
                f"the {APP_NAME} auth app reads its settings from basic-auth's ini: set MLFLOW_AUTH_CONFIG_PATH to "
                f"a file holding MLflow's [mlflow] section and\n{example}(adapter-registry stack up writes one)"
            )
        parser = configparser.ConfigParser()
        parser.read(chosen)
        if (
            not parser.has_section(SECTION)
            or not parser[SECTION].get("policy")
            or not parser[SECTION].get("audit_key")
        ):
            raise AppConfigError(
                f"{chosen} has no [{SECTION}] section with policy and audit_key; add\n{example}"
            )
        section = parser[SECTION]
        policy = Path(section["policy"]).expanduser()
        try:
            load_policy(policy)
        except RegistryError as exc:
            raise AppConfigError(f"{chosen}: {exc.message}") from exc
        key_path = Path(section["audit_key"]).expanduser()
        if not key_path.is_file():
            raise AppConfigError(
                f'audit key {key_path} does not exist: create it with: python -c "import secrets; '
                f'print(secrets.token_hex(32))" > {key_path} && chmod 600 {key_path}'
            )
        mode = key_path.stat().st_mode & 0o777
        if mode & 0o077:
            raise AppConfigError(
                f"audit key {key_path} may be read by others (mode {mode:04o}): chmod 600 {key_path}"
            )
        key = key_path.read_text().strip()
        if len(key) < 32:
            raise AppConfigError(
                f"audit key {key_path} is too short ({len(key)} characters; 64 hex characters wanted)"
            )
        heads = Path(
            section.get("audit_heads") or key_path.with_name(key_path.stem + ".heads.json")
        ).expanduser()
        return cls(policy, key.encode(), heads)


class PolicyFile:
    """The server's promotion policy, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: int | None = None
        self._policy = PromotionPolicy()

    def get(self) -> PromotionPolicy:
        """The policy; RegistryError when the file is gone or invalid (protected moves are then refused)."""
        try:
            stamp = self.path.stat().st_mtime_ns
        except OSError as exc:
            raise RegistryError(
                "INVALID_STATE", f"the server's promotion policy {self.path} is unreadable: {exc}"
            ) from exc
        if stamp != self._stamp:
            self._policy = load_policy(self.path)
            self._stamp = stamp
        return self._policy


class Heads:
    """The head of each adapter's signed chain, in a JSON file on the server host (no client can reach it), and the
    lock that serialises appends (exclusive) against reads (shared)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")

    @contextlib.contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read(self) -> dict[str, Head]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {model: Head(int(h["seq"]), str(h["mac"]), str(h["hash"])) for model, h in data.items()}

    def write(self, heads: dict[str, Head]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({m: h.to_dict() for m, h in sorted(heads.items())}, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


# ------------------------------------------------------------------------------------------------ the app
_MLFLOW_ROUTE = re.compile(r"/(?:ajax-)?api/\d+\.\d+(/mlflow/[\w/-]+)")
WRITES = ("POST", "PATCH", "PUT", "DELETE")


def _tracking() -> Any:
    from mlflow.server.handlers import _get_tracking_store

    return _get_tracking_store()


def _registry() -> Any:
    from mlflow.server.handlers import _get_model_registry_store

    return _get_model_registry_store()


def _param(name: str) -> str | None:
    """A request parameter as MLflow's handlers read it (query, JSON body), or None."""
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth import _get_request_param

    try:
        value = _get_request_param(name)
    except MlflowException:
        return None
    return None if value is None else str(value)


def _user() -> str:
    from flask import g
    from mlflow.server.auth import authenticate_request

    return str(getattr(g, "mlflow_authenticated_user", None) or authenticate_request().username)  # type: ignore[union-attr]


def _is_admin(user: str) -> bool:
    from mlflow.server.auth import store

    return bool(store.get_user(user).is_admin)


def _error(status: int, code: str, message: str) -> Response:
    from flask import jsonify

    response = jsonify({"error_code": code, "message": message})
    response.status_code = status
    return response


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Guard:
    """The app's state in one server worker: its settings, and the request hooks and routes built on them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = PolicyFile(settings.policy_path)
        self.heads = Heads(settings.heads_path)
        self._audit_id: str | None = None

    # ---------------------------------------------------------------------------------------- audit store
    def audit_experiment(self, create: bool) -> str | None:
        if self._audit_id is None:
            store = _tracking()
            found = store.get_experiment_by_name(AUDIT_EXPERIMENT)
            if found is None and create:
                from mlflow.exceptions import MlflowException

                try:
                    store.create_experiment(AUDIT_EXPERIMENT)
                except MlflowException as exc:  # another worker created it meanwhile
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                found = store.get_experiment_by_name(AUDIT_EXPERIMENT)
            self._audit_id = None if found is None else str(found.experiment_id)
        return self._audit_id

    def runs(self, model: str | None) -> Runs:
        from mlflow.entities import ViewType

        from adapter_registry.registry.server_listing import audit_runs

        experiment = self.audit_experiment(create=False)
        if experiment is None:
            return []
        read = audit_runs(_tracking(), experiment, model)  # plain SQL where the store is a SQL database
        if read is not None:
            return read
        where = f"tags.`{AuditTag.MODEL}` = '{quote(model)}'" if model is not None else ""
        out: Runs = []
        token = None
        while True:
            page = _tracking().search_runs([experiment], where, ViewType.ALL, 1000, None, token)
            out.extend((dict(r.data.tags), r.info.lifecycle_stage == "deleted") for r in page)
            token = page.token
            if not token:
                return out

    def append(self, event: StageChange) -> StageChange:
        """Sign ``event`` (actor and time already the server's) as the next link of its adapter's chain, write it as
        a finished run of the audit experiment and record the new head; returns it with its sequence number."""
        from mlflow.entities import RunStatus, RunTag

        with self.heads.locked(exclusive=True):
            heads = self.heads.read()
            head = heads.get(event.model) or self._head_from_runs(event.model)
            event = replace(event, seq=(head.seq if head else 0) + 1, verified=True)
            tags = link(event, head.hash if head else "", self.settings.key, head.mac if head else "")
            store = _tracking()
            now_ms = int(time.time() * 1000)
            run = store.create_run(
                self.audit_experiment(create=True), event.who, now_ms, [RunTag(k, v) for k, v in tags.items()],
                f"{event.model}#{event.seq} {event.action} v{event.version}",
            )  # fmt: skip
            store.update_run_info(run.info.run_id, RunStatus.FINISHED, now_ms, None)
            heads[event.model] = Head(event.seq, tags[AuditTag.MAC], tags[AuditTag.HASH])
            self.heads.write(heads)
        log.info("audit %s#%d: %s of version %d to %s by %r", event.model, event.seq, event.action, event.version,
                 event.to_stage, event.who)  # fmt: skip
        return event

    def _head_from_runs(self, model: str) -> Head | None:
        """No head recorded (a trail begun before the app ran, or a lost heads file): continue after its last run."""
        rows = [(int(tags.get(AuditTag.SEQ, "0") or 0), tags) for tags, _ in self.runs(model)]
        if not rows:
            return None
        seq, tags = max(rows, key=lambda row: row[0])
        log.warning("no audit head recorded for %r: continuing after its event %d", model, seq)
        return Head(seq, tags.get(AuditTag.MAC, ""), tags.get(AuditTag.HASH, ""))

    def trails(self, model: str | None) -> dict[str, AuditTrail]:
        with self.heads.locked(exclusive=False):
            heads = self.heads.read()
            runs = self.runs(model)
        grouped: dict[str, Runs] = {} if model is None else {model: []}
        for tags, deleted in runs:
            grouped.setdefault(tags.get(AuditTag.MODEL, ""), []).append((tags, deleted))
        if model is None:
            for name in heads:
                grouped.setdefault(name, [])
        return {
            name: signed_chain(name, rows, self.settings.key, heads.get(name))
            for name, rows in grouped.items()
            if name
        }

    def refuse(self, event: StageChange, message: str) -> Response:
        """Record a refusal (signed) and answer 403 with ``message``."""
        log.warning("refused: %s", message)
        with contextlib.suppress(Exception):  # the refusal stands even if it cannot be recorded
            self.append(replace(event, action="refused", reason=f"{message} ({_request_line()})"))
        return _error(403, "PERMISSION_DENIED", message)

    # ---------------------------------------------------------------------------------------- request hook
    def before_request(self) -> Response | None:
        """Runs after basic-auth's hook, for requests it let through (authenticated, MLflow-permitted)."""
        from flask import request
        from mlflow.server.auth import _strip_static_prefix

        if request.method not in WRITES:
            return None
        matched = _MLFLOW_ROUTE.fullmatch(_strip_static_prefix(request.path))
        if matched is None:
            return None
        route = matched.group(1)
        return self._audit_write(route) or self._stage_move(route, request.method)

    def _audit_write(self, route: str) -> Response | None:
        """403 for a request that would write the audit experiment (its runs, tags, name, lifecycle)."""
        refusal = _error(
            403, "PERMISSION_DENIED",
            f"the audit experiment {AUDIT_EXPERIMENT!r} is written by the tracking server only (the {APP_NAME} "
            "auth app signs each event): record stage changes with adapter-registry promote, rollback or retire",
        )  # fmt: skip
        if route == "/mlflow/experiments/create":
            return refusal if _param("name") == AUDIT_EXPERIMENT else None
        if route == "/mlflow/experiments/update" and _param("new_name") == AUDIT_EXPERIMENT:
            return refusal
        if route.endswith("search"):
            return None
        audit_id = self.audit_experiment(create=False)
        if audit_id is None:
            return None
        touched = {_param("experiment_id")}
        run_id = _param("run_id") or _param("run_uuid")
        if run_id:
            with contextlib.suppress(Exception):  # no such run: MLflow's handler answers
                touched.add(str(_tracking().get_run(run_id).info.experiment_id))
        if audit_id in touched:
            log.warning(
                "refused: %s %s by %r writes the audit experiment", *_request_line().split(" ", 1), _user()
            )
            return refusal
        return None

    def _stage_move(self, route: str, method: str) -> Response | None:
        """403 (and an audited refusal) for a move of a protected stage's alias by a user the policy does not name."""
        name = _param("name")
        if name is None:
            return None
        moves: list[tuple[str, int, str, str]] = []  # (stage, version, from stage, what the request does)
        with contextlib.suppress(Exception):  # a model, version or alias that does not exist: MLflow answers
            if route == "/mlflow/registered-models/alias" and method == "POST":
                alias, version = _param("alias") or "", int(_param("version") or 0)
                mv = _registry().get_model_version(name, str(version))
                moves.append((alias, version, stage_of(mv.aliases, _tags(mv)),
                              f"setting alias {alias!r} of {name!r} to version {version}"))  # fmt: skip
            elif route == "/mlflow/registered-models/alias" and method == "DELETE":
                alias = _param("alias") or ""
                mv = _registry().get_model_version_by_alias(name, alias)
                moves.append((alias, int(mv.version), alias, f"removing alias {alias!r} of {name!r}"))
            elif route == "/mlflow/model-versions/delete" and method == "DELETE":
                mv = _registry().get_model_version(name, _param("version"))
                moves += [(a, int(mv.version), a, f"deleting version {mv.version} of {name!r}, which holds {a!r}")
                          for a in mv.aliases]  # fmt: skip
            elif route in ("/mlflow/registered-models/delete", "/mlflow/registered-models/rename"):
                doing = "deleting" if route.endswith("delete") else "renaming"
                for alias, version in _registry().get_registered_model(name).aliases.items():
                    moves.append((alias, int(version), alias,
                                  f"{doing} registered model {name!r}, whose version {version} holds {alias!r}"))  # fmt: skip
        if not moves:
            return None
        user = _user()
        try:
            policy = self.policy.get()
        except RegistryError as exc:
            return _error(403, "PERMISSION_DENIED", f"protected stages cannot be moved now: {exc.message}")
        for stage, version, from_stage, doing in moves:
            refusal = policy.refusal(stage, user, authenticated=True)
            if refusal is not None:
                to_stage = (
                    stage if route == "/mlflow/registered-models/alias" and method == "POST" else "archived"
                )
                event = StageChange(model=name, version=version, from_stage=from_stage, to_stage=to_stage, who=user,
                                    when=_now(), action="refused")  # fmt: skip
                return self.refuse(event, f"{doing} refused by the tracking server: {refusal}")
            if policy.protects(stage):
                log.info("user %r: %s (allowed by the promotion policy; %s)", user, doing, _request_line())
        return None

    # ---------------------------------------------------------------------------------------- routes
    def server_info(self) -> Response:
        from flask import jsonify

        try:
            policy = self.policy.get()
        except RegistryError as exc:
            return _error(500, "INTERNAL_ERROR", exc.message)
        return jsonify({"app": APP_NAME, "user": _user(), "policy": policy.model_dump(mode="json"),
                        "audit": {"signed": True, "experiment": AUDIT_EXPERIMENT}})  # fmt: skip

    def append_route(self) -> Response:
        from flask import jsonify, request

        user = _user()
        try:
            body = request.get_json(force=True)
            event = StageChange.from_dict(body["event"])
        except Exception as exc:
            return _error(
                400, "INVALID_PARAMETER_VALUE", f"the body must be {{'event': <a stage change>}}: {exc}"
            )
        if event.action not in ACTIONS:
            return _error(
                400, "INVALID_PARAMETER_VALUE", f"action {event.action!r} is not one of {', '.join(ACTIONS)}"
            )
        if not _is_admin(user) and not _can("update", event.model):
            return _error(
                403, "PERMISSION_DENIED",
                f"user {user!r} may not write the audit trail of {event.model!r}: it needs EDIT on that registered model",
            )  # fmt: skip
        event = replace(event, who=user, when=_now())  # the server says who and when, not the client
        if event.action != "refused":
            problem = self._placing_problem(event)
            if problem is not None:
                status, code, message = problem
                if status == 403:
                    return self.refuse(event, message)
                return _error(status, code, message)
        return jsonify({"event": self.append(event).to_dict()})

    def _placing_problem(self, event: StageChange) -> tuple[int, str, str] | None:
        """Why the server will not sign a promotion, rollback or retirement: the policy, or aliases that do not say
        what the event claims (the client moves them first)."""
        stage = (
            event.from_stage if event.action == "retire" or event.action in CANARY_ENDS else event.to_stage
        )
        try:
            refusal = self.policy.get().refusal(stage, event.who, authenticated=True)
        except RegistryError as exc:
            return 403, "PERMISSION_DENIED", exc.message
        if refusal is not None:
            return (
                403,
                "PERMISSION_DENIED",
                f"{event.action} of {event.model}/{event.version} refused by the tracking server: {refusal}",
            )
        if event.action == CANARY_START or event.action in CANARY_ENDS:
            return None  # a canary's event comes first, its alias follows (replicas route by both: registry.canary)
        from mlflow.exceptions import MlflowException

        try:
            holder: int | None = int(_registry().get_model_version_by_alias(event.model, stage).version)
        except MlflowException:
            holder = None
        placed = event.action != "retire"
        if (holder == event.version) != placed:
            said = "nobody" if holder is None else f"version {holder}"
            return (
                409,
                "INVALID_STATE",
                (
                    f"{event.action} of {event.model}/{event.version} not recorded: alias {stage!r} points at {said}; "
                    "the stage must be moved before its event is recorded"
                ),
            )
        return None

    def trails_route(self) -> Response:
        from flask import jsonify, request

        experiment = self.audit_experiment(create=False)
        if experiment is not None and not _is_admin(_user()) and not _can("read", None, experiment):
            return _error(
                403, "PERMISSION_DENIED", f"reading the audit trail needs READ on {AUDIT_EXPERIMENT!r}"
            )
        model = request.args.get("model") or None
        return jsonify({"trails": {name: trail.to_dict() for name, trail in self.trails(model).items()}})

    def install(self, app: Flask) -> None:
        from mlflow.server import auth
        from mlflow.server.handlers import _add_static_prefix

        from adapter_registry.registry import server_listing

        routes = [("server", self.server_info, "GET"), ("audit/append", self.append_route, "POST"),
                  ("audit/trails", self.trails_route, "GET"),
                  (server_listing.ROUTE, server_listing.summaries_view, "GET")]  # fmt: skip
        for endpoint, view, method in routes:
            rule = _add_static_prefix(f"/api/2.0/{APP_NAME}/{endpoint}")
            app.add_url_rule(rule, endpoint=f"adapter_registry_{endpoint.replace('/', '_')}", view_func=view,
                             methods=[method])  # fmt: skip
            # these views check permissions themselves; with MLFLOW_BASIC_AUTH_FAIL_CLOSED a route needs a validator
            auth.BEFORE_REQUEST_VALIDATORS[(rule, method)] = _authenticated


def _authenticated() -> bool:
    return True


def _can(action: str, model: str | None, experiment: str = "") -> bool:
    """Whether the request's user may ``action`` (read, update) the registered model, else the experiment."""
    from mlflow.server import auth

    if model is not None:
        permission = auth._get_registered_model_permission(model)
    else:
        permission = auth._get_experiment_permission(experiment, _user())
    return bool(getattr(permission, f"can_{action}"))


def _tags(mv: Any) -> dict[str, str]:
    tags = mv.tags
    return dict(tags) if isinstance(tags, dict) else {t.key: t.value for t in tags or ()}


def _request_line() -> str:
    from flask import request

    via = "the MLflow UI" if "/ajax-api/" in request.path else "the REST API"
    return f"{request.method} {request.path} via {via}"


def create_app(app: Flask | None = None) -> Any:
    """The factory ``mlflow server --app-name adapter-registry`` calls: basic-auth, then this app's hook and
    routes. Refuses to start (AppConfigError) without its configuration."""
    from mlflow.server import app as mlflow_app
    from mlflow.server.auth import create_app as basic_auth

    if not log.handlers:  # the server's log (stderr) names every refusal
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s adapter-registry auth app: %(message)s")
        )
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    flask_app = app or mlflow_app
    guard = Guard(Settings.load())
    guard.install(flask_app)
    served = basic_auth(flask_app)
    flask_app.before_request(
        guard.before_request
    )  # after basic-auth's: the user is authenticated and permitted
    log.info("protecting stages per %s; audit trail signed, heads in %s", guard.settings.policy_path,
             guard.settings.heads_path)  # fmt: skip
    return served
