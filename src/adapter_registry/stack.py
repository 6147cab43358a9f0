"""The team stack in one folder: PostgreSQL, and an MLflow tracking server on it with proxied artifacts and the
project's auth app (basic-auth, protected stages, a server-signed audit trail).

``adapter-registry stack up`` (``make team-up``) and the test suite's PostgreSQL fixture both run :class:`Stack`:

- PostgreSQL from the distribution's binaries (Debian's ``postgresql`` package: ``initdb`` and ``pg_ctl``, no
  system service), its cluster in ``<folder>/postgres``, listening on 127.0.0.1 only (no Unix socket), password
  authentication (scram-sha-256) for one superuser ``mlflow``. PostgreSQL refuses to run as root: as root, the
  cluster is owned by and run as the ``postgres`` user (created when missing); as anyone else, as that user.
- Two databases: ``mlflow`` (tracking and model registry) and ``mlflow_auth`` (the basic-auth users).
- ``mlflow server --backend-store-uri postgresql://... --artifacts-destination <folder>/artifacts --app-name
  adapter-registry``: clients upload and download artifacts through the server (``mlflow-artifacts:/``), so they
  need no object-store credentials. ``ADAPTER_REGISTRY_ARTIFACTS_DESTINATION`` (e.g. ``s3://bucket/prefix``)
  replaces the folder; the server then reads the object store's usual variables (``MLFLOW_S3_ENDPOINT_URL``,
  ``AWS_*``). The app (``registry.auth_app``) is basic-auth plus the stages protected by
  ``<folder>/promotion_policy.yml`` (copied from the project's ``conf/base/promotion_policy.yml`` on the first
  ``up``; edit it there, the server re-reads it) and the audit trail signed with ``<folder>/audit.key``; both are
  named in the ``[adapter_registry]`` section of ``<folder>/basic_auth.ini``.
- Secrets are generated on the first ``up`` and kept in ``<folder>/secrets.json`` (mode 0600): the PostgreSQL
  password, the basic-auth admin password, the Flask secret key; and ``<folder>/audit.key`` (mode 0600). Nothing
  secret is put on a command line (the server gets the database password through ``PGPASSWORD``).

``down`` stops the server (the process group it started) and PostgreSQL (``pg_ctl stop -m fast``); ``status``
says what runs. State (ports, the server's pid) is kept in ``<folder>/stack.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapter_registry.registry import auth_app
from adapter_registry.registry.entities import LOCK_MODEL
from adapter_registry.registry.policy import DEFAULT_POLICY_PATH

POSTGRES_USER = "postgres"  # the unprivileged account PostgreSQL runs as when we are root
DB_USER = "mlflow"  # the cluster's superuser, owner of both databases
DATABASES = ("mlflow", "mlflow_auth")
ADMIN_USER = "admin"
ARTIFACTS_ENV = "ADAPTER_REGISTRY_ARTIFACTS_DESTINATION"
FOLDER_ENV = "ADAPTER_REGISTRY_TEAM_DIR"
AUTH_CACHE_S = 60  # basic-auth: seconds a checked password stays valid in a server worker
DEFAULT_FOLDER = ".team"
DEFAULT_POLICY = """\
# The promotion policy this team's tracking server enforces (its adapter-registry auth app re-reads this file when
# it changes). Written by `adapter-registry stack up`, from the project's conf/base/promotion_policy.yml when there
# is one. A user not named here cannot move a protected stage's alias by any route: CLI, REST or MLflow's UI.
enforce: auth_server
stages:
  production:
    allowed_users: [{admin}]  # MLflow usernames allowed to promote to / roll back / retire production
  staging:
    allowed_users: null     # null: anyone who may edit the registered model
"""


class StackError(Exception):
    """The stack could not be started, stopped or read; the message says what to do."""


# ------------------------------------------------------------------------------------------------ PostgreSQL
def postgres_bin() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``, or None when PostgreSQL is not installed.

    ``PG_BIN`` when set; else the newest ``/usr/lib/postgresql/<major>/bin`` (Debian and Ubuntu put the server
    binaries there, off PATH); else the folder of ``initdb`` on PATH.
    """
    if os.environ.get("PG_BIN"):
        folder = Path(os.environ["PG_BIN"])
        return folder if (folder / "initdb").is_file() else None
    debian = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1]
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is free
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class RunAs:
    """The account PostgreSQL runs as: ourselves, or (as root) an unprivileged user."""

    uid: int
    gid: int
    name: str

    @classmethod
    def for_postgres(cls) -> RunAs:
        if os.geteuid() != 0:
            import pwd

            return cls(os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name)
        return cls.of(_ensure_user(POSTGRES_USER))

    @classmethod
    def of(cls, name: str) -> RunAs:
        import pwd

        entry = pwd.getpwnam(name)
        return cls(entry.pw_uid, entry.pw_gid, name)

    @property
    def switches(self) -> bool:
        return self.uid != os.geteuid()

    def popen_kwargs(self) -> dict[str, Any]:
        """``subprocess`` arguments that run the child as this user (nothing when it is us)."""
        if not self.switches:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def own(self, path: Path) -> None:
        if self.switches:
            os.chown(path, self.uid, self.gid)


def _ensure_user(name: str) -> str:
    """``name`` as a system account, created (no home, no login shell) when it does not exist; root only."""
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd")
        if not useradd:
            raise StackError(
                f"PostgreSQL refuses to run as root and there is no {name!r} user to run it as; create one "
                f"(useradd --system {name}) or run as an unprivileged user"
            ) from None
        subprocess.run([useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)  # fmt: skip
    return name


def _reachable(path: Path, user: RunAs) -> Path | None:
    """The first folder above ``path`` that ``user`` cannot enter (no search permission), or None."""
    if not user.switches:
        return None
    for folder in reversed(path.resolve().parents):
        st = folder.stat()
        if st.st_uid == user.uid:
            mode_ok = st.st_mode & 0o100
        elif st.st_gid == user.gid:
            mode_ok = st.st_mode & 0o010
        else:
            mode_ok = st.st_mode & 0o001
        if not mode_ok:
            return folder
    return None


# ------------------------------------------------------------------------------------------------ the stack
@dataclass
class StackStatus:
    folder: str
    postgres: bool
    mlflow: bool
    tracking_uri: str | None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "postgres": self.postgres,
            "mlflow": self.mlflow,
            "tracking_uri": self.tracking_uri,
            **self.details,
        }


class Stack:
    """PostgreSQL + ``mlflow server`` (the adapter-registry auth app, proxied artifacts) kept in ``folder``."""

    def __init__(self, folder: Path | str | None = None) -> None:
        chosen = folder or os.environ.get(FOLDER_ENV) or DEFAULT_FOLDER
        self.folder = Path(chosen).absolute()
        self.pgdata = self.folder / "postgres"
        self.state_file = self.folder / "stack.json"
        self.secrets_file = self.folder / "secrets.json"
        self.auth_config = self.folder / "basic_auth.ini"
        self.policy_file = self.folder / "promotion_policy.yml"
        self.audit_key = self.folder / "audit.key"
        self.pg_log = self.folder / "postgres.log"
        self.mlflow_log = self.folder / "mlflow.log"

    # ---------------------------------------------------------------------------------------- files
    def _read_json(self, path: Path) -> dict[str, Any]:
        try:
            return dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise StackError(f"{path} is not valid JSON ({exc}); remove it or the folder") from exc

    def _write_json(self, path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        os.chmod(tmp, mode)
        os.replace(tmp, path)

    def secrets(self) -> dict[str, str]:
        """The stack's secrets, generated (and written 0600) the first time."""
        found = self._read_json(self.secrets_file)
        if not found:
            found = {
                "postgres_password": secrets.token_urlsafe(24),
                "admin_user": ADMIN_USER,
                "admin_password": secrets.token_urlsafe(18),
                "flask_secret_key": secrets.token_hex(32),
            }
            self._write_json(self.secrets_file, found, mode=0o600)
        return {k: str(v) for k, v in found.items()}

    def state(self) -> dict[str, Any]:
        return self._read_json(self.state_file)

    # ---------------------------------------------------------------------------------------- up
    def up(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        workers: int = 2,
        wait_s: float = 180.0,
        log: Any = None,
    ) -> StackStatus:
        """Start whatever is not running yet (idempotent) and wait until the server answers."""
        say = log or (lambda message: None)
        pg_bin = postgres_bin()
        if pg_bin is None:
            raise StackError(
                "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH); install it "
                "with: apt-get install -y postgresql (or set PG_BIN to the folder holding initdb and pg_ctl)"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        user = RunAs.for_postgres()
        if user.switches:
            os.chmod(self.folder, 0o711)  # the postgres user enters it; it lists nothing
            blocked = _reachable(self.folder, user)
            if blocked is not None:
                raise StackError(
                    f"PostgreSQL runs as user {user.name!r} (it refuses root), who cannot enter {blocked}; put the "
                    f"stack in a folder that user can reach (e.g. --folder /srv/team) or chmod o+x {blocked}"
                )
        state = self.state()
        creds = self.secrets()
        if not self._postgres_running(pg_bin, user):
            if not (self.pgdata / "PG_VERSION").is_file():
                say(f"initdb {self.pgdata} (as {user.name})")
                self._initdb(pg_bin, user, creds["postgres_password"])
            pg_port = state.get("postgres_port")
            if not pg_port or not port_free(int(pg_port)):
                pg_port = free_port()
            say(f"starting PostgreSQL on 127.0.0.1:{pg_port}")
            self._pg_start(pg_bin, user, int(pg_port))
            state["postgres_port"] = int(pg_port)
            self._write_json(self.state_file, state)
        pg_port = int(state["postgres_port"])
        self._create_databases(pg_port, creds["postgres_password"])
        if not self._mlflow_running(state):
            mlflow_port = port or state.get("mlflow_port") or 5000
            if not port_free(int(mlflow_port), host if host != "0.0.0.0" else "127.0.0.1"):
                raise StackError(
                    f"port {mlflow_port} is taken; start the stack with --port N (a free port)"
                    + ("" if port else f" or stop what listens on {mlflow_port}")
                )
            self._app_files(creds)
            say(
                f"starting mlflow server on {host}:{mlflow_port} (auth app {auth_app.APP_NAME}, artifacts proxied)"
            )
            pid = self._mlflow_start(pg_port, host, int(mlflow_port), workers, creds)
            state.update(mlflow_port=int(mlflow_port), mlflow_pid=pid, host=host)
            self._write_json(self.state_file, state)
            self._wait_healthy(state, creds, wait_s)
            self._prepare(state, creds)
        return self.status()

    def _app_files(self, creds: dict[str, str]) -> None:
        """The auth app's files, made on the first ``up``: the policy and the audit key. Refuses to start a server
        whose app cannot be found (an install older than the app's entry point)."""
        from importlib.metadata import entry_points

        if auth_app.APP_NAME not in {e.name for e in entry_points(group="mlflow.app")}:
            raise StackError(
                f"MLflow does not know the auth app {auth_app.APP_NAME!r}: the installed adapter-registry predates "
                'its entry point; reinstall the project (pip install -e ".[dev]", or make setup)'
            )
        if not self.policy_file.exists():
            project = DEFAULT_POLICY_PATH if DEFAULT_POLICY_PATH.is_file() else None
            text = project.read_text() if project else DEFAULT_POLICY.format(admin=creds["admin_user"])
            self.policy_file.write_text(text)
        auth_app.new_key(self.audit_key)

    def _prepare(self, state: dict[str, Any], creds: dict[str, str]) -> None:
        """Create, as the admin, the writer-lock model every writer shares (an admin then grants each writer EDIT
        on it; see README "Team registry"). The audit experiment is the server's own (its auth app creates it)."""
        import requests

        url = f"{self.tracking_uri(state)}/api/2.0/mlflow"
        auth = (creds["admin_user"], creds["admin_password"])
        body: dict[str, Any] = {"name": LOCK_MODEL, "tags": [{"key": "ar.kind", "value": "writer-locks"}]}
        answer = requests.post(f"{url}/registered-models/create", json=body, auth=auth, timeout=30)
        if answer.status_code != 200 and "RESOURCE_ALREADY_EXISTS" not in answer.text:
            raise StackError(f"creating {LOCK_MODEL!r} on the new server failed: {answer.text[:300]}")

    def _initdb(self, pg_bin: Path, user: RunAs, password: str) -> None:
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        user.own(self.pgdata)
        pwfile = self.folder / ".pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        user.own(pwfile)
        try:
            self._run(user, [str(pg_bin / "initdb"), "-D", str(self.pgdata), "-U", DB_USER,
                             f"--pwfile={pwfile}", "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                             "--encoding=UTF8", "--no-locale", "--no-instructions"], "initdb")  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)

    def _pg_start(self, pg_bin: Path, user: RunAs, pg_port: int) -> None:
        self.pg_log.touch()
        user.own(self.pg_log)
        options = f"-c listen_addresses=127.0.0.1 -c port={pg_port} -c unix_socket_directories=''"
        self._run(user, [str(pg_bin / "pg_ctl"), "start", "-D", str(self.pgdata), "-l", str(self.pg_log),
                         "-w", "-t", "60", "-o", options], "pg_ctl start", log=self.pg_log)  # fmt: skip

    def _postgres_running(self, pg_bin: Path, user: RunAs) -> bool:
        if not (self.pgdata / "PG_VERSION").is_file():
            return False
        result = subprocess.run([str(pg_bin / "pg_ctl"), "status", "-D", str(self.pgdata)], capture_output=True,
                                text=True, cwd=self.folder, **user.popen_kwargs())  # fmt: skip
        return result.returncode == 0

    def _run(self, user: RunAs, command: list[str], what: str, log: Path | None = None) -> None:
        result = subprocess.run(
            command, capture_output=True, text=True, cwd=self.folder, **user.popen_kwargs()
        )
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip()[-1500:]
            if log is not None and log.is_file():
                tail += "\n" + log.read_text(errors="replace")[-1500:]
            raise StackError(f"{what} failed (exit {result.returncode}): {tail}")

    def _create_databases(self, pg_port: int, password: str) -> None:
        try:
            import psycopg2
        except ImportError as exc:
            raise StackError(
                "psycopg2 is missing (the PostgreSQL driver MLflow needs); install it: pip install psycopg2-binary"
            ) from exc
        conn = psycopg2.connect(
            host="127.0.0.1", port=pg_port, user=DB_USER, password=password, dbname="postgres"
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                for name in DATABASES:
                    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cursor.fetchone() is None:
                        cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def _pg_uri(self, pg_port: int, database: str) -> str:
        return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{pg_port}/{database}"  # password: PGPASSWORD

    def artifacts_destination(self) -> str:
        return os.environ.get(ARTIFACTS_ENV) or str(self.folder / "artifacts")

    def _mlflow_start(self, pg_port: int, host: str, port: int, workers: int, creds: dict[str, str]) -> int:
        fd = os.open(self.auth_config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = {self._pg_uri(pg_port, 'mlflow_auth')}\n"
                f"admin_username = {creds['admin_user']}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                # Checking a password is a PBKDF2 hash (about 1 s of CPU here) on every request unless cached:
                # a promotion makes a dozen requests. A changed password reaches other workers within the TTL.
                f"auth_cache_ttl_seconds = {AUTH_CACHE_S}\n\n"
                + auth_app.config_section(self.policy_file, self.audit_key)
            )
        env = {
            **os.environ,
            "PGPASSWORD": creds["postgres_password"],
            "MLFLOW_AUTH_CONFIG_PATH": str(self.auth_config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": creds["admin_password"],  # used once, when the user store is empty
            "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["flask_secret_key"],
        }
        # MLflow's job runner (GenAI scorers, trace archival) starts huey worker processes the registry never
        # uses: on 2 cores they hold start-up back by a minute. A team that wants them sets it to true.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(key, None)
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self._pg_uri(pg_port, "mlflow"),
            "--artifacts-destination", self.artifacts_destination(),
            "--host", host, "--port", str(port), "--workers", str(workers), "--app-name", auth_app.APP_NAME,
        ]  # fmt: skip
        with self.mlflow_log.open("a") as log:
            process = subprocess.Popen(command, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)  # fmt: skip
        return process.pid

    def _wait_healthy(self, state: dict[str, Any], creds: dict[str, str], wait_s: float) -> None:
        import requests

        url = self.tracking_uri(state)
        assert url is not None
        deadline = time.monotonic() + wait_s
        while True:
            if not _alive(int(state["mlflow_pid"])):
                raise StackError(
                    f"mlflow server exited; its log {self.mlflow_log} ends with:\n{self._log_tail()}"
                )
            try:
                who = requests.get(f"{url}/api/2.0/mlflow/users/current", timeout=2,
                                   auth=(creds["admin_user"], creds["admin_password"]))  # fmt: skip
                if who.status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise StackError(
                    f"mlflow server not answering at {url} after {wait_s:.0f} s; see {self.mlflow_log}:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.5)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.mlflow_log.read_text(errors="replace")[-2000:]
        return ""

    # ---------------------------------------------------------------------------------------- down / status
    def down(self, log: Any = None) -> StackStatus:
        """Stop the server (its whole process group) and PostgreSQL; keeps the data."""
        say = log or (lambda message: None)
        state = self.state()
        pid = state.get("mlflow_pid")
        if pid and self._mlflow_running(state):
            say(f"stopping mlflow server (pid {pid})")
            _stop_group(int(pid))
        state.pop("mlflow_pid", None)
        if self.state_file.exists():
            self._write_json(self.state_file, state)
        pg_bin = postgres_bin()
        if pg_bin is not None and (self.pgdata / "PG_VERSION").is_file():
            user = RunAs.for_postgres()
            if self._postgres_running(pg_bin, user):
                say("stopping PostgreSQL")
                self._run(user, [str(pg_bin / "pg_ctl"), "stop", "-D", str(self.pgdata), "-m", "fast", "-w"],
                          "pg_ctl stop")  # fmt: skip
        return self.status()

    def _mlflow_running(self, state: dict[str, Any]) -> bool:
        pid = state.get("mlflow_pid")
        return pid is not None and _alive(int(pid)) and _is_mlflow_server(int(pid))

    def tracking_uri(self, state: dict[str, Any] | None = None) -> str | None:
        state = self.state() if state is None else state
        if not state.get("mlflow_port"):
            return None
        host = state.get("host", "127.0.0.1")
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{state['mlflow_port']}"

    def status(self) -> StackStatus:
        state = self.state()
        pg_bin = postgres_bin()
        postgres = False
        if pg_bin is not None and (self.pgdata / "PG_VERSION").is_file():
            postgres = self._postgres_running(pg_bin, RunAs.for_postgres())
        mlflow = self._mlflow_running(state)
        details = {
            "postgres_port": state.get("postgres_port"),
            "mlflow_pid": state.get("mlflow_pid") if mlflow else None,
            "artifacts": self.artifacts_destination(),
            "secrets": str(self.secrets_file),
            "logs": [str(self.pg_log), str(self.mlflow_log)],
        }
        return StackStatus(
            str(self.folder), postgres, mlflow, self.tracking_uri(state) if mlflow else None, details
        )

    def exports(self) -> list[str]:
        """The shell lines that point a client at this stack (the admin user; create others with MLflow)."""
        creds = self.secrets()
        uri = self.tracking_uri()
        return [
            f"export MLFLOW_TRACKING_URI={uri}",
            f"export MLFLOW_TRACKING_USERNAME={creds['admin_user']}",
            f"export MLFLOW_TRACKING_PASSWORD={creds['admin_password']}",
        ]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    return True


def _is_mlflow_server(pid: int) -> bool:
    """Whether ``pid`` still is an ``mlflow server`` (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the recorded pid
    return b"mlflow" in b" ".join(cmdline) and b"server" in cmdline


def _stop_group(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM the process group ``pid`` leads (the server and its workers), SIGKILL after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when this process started it (the tests do)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
