"""The registry contract on three backends: a sqlite file, ``mlflow server`` on sqlite, ``mlflow server`` on
PostgreSQL (the team stack, with the project's auth app: basic-auth, protected stages, a server-signed audit trail). Register -> pull -> sha256; list/show/filters (the listing's fast
paths against full reads); promote/rollback/audit and attested stages; many writers at once; bad input and faults.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter_registry.checksums import sha256_file
from adapter_registry.cli import app
from adapter_registry.registry import promotion
from adapter_registry.registry.audit import AuditLog
from adapter_registry.registry.entities import AdapterVersion, RegistryError, Tag
from adapter_registry.registry.policy import Actor, PromotionPolicy
from adapter_registry.registry.sqlite import KNOWN_REVISIONS
from adapter_registry.registry.stages import replay
from adapter_registry.registry.store import AdapterStore

from .conftest import GOOD_METRICS, lineage_tags, stack_env, start_server, stop_group

OPEN = PromotionPolicy(enforce="never")
ME = Actor("carol", False)
LISTED = ("name", "version", "stage", "run_id", "source", "created", "description", "aliases")


def fresh_name() -> str:
    return f"adapter_{uuid.uuid4().hex[:8]}"


def cli(store: AdapterStore, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["--tracking-uri", store.tracking_uri, *args])
    return result.exit_code, result.stdout, result.stderr


def listed(version: AdapterVersion) -> tuple[object, ...]:
    """What a listing shows of a version (its summary tags may be fewer than ``get_version``'s)."""
    return (*(getattr(version, f) for f in LISTED), version.metrics, version.base_id, version.base_fingerprint,
            version.method, version.task)  # fmt: skip


def test_register_pull_list_show(backend: AdapterStore, adapter_dir: Path, tmp_path: Path) -> None:
    name = fresh_name()
    other = f"{name}_other"  # sorts after name
    first = backend.register_adapter(name, adapter_dir, lineage_tags(), GOOD_METRICS)
    second = backend.register_adapter(
        name, adapter_dir, {**lineage_tags(base="other-base", fingerprint="e" * 64), Tag.METHOD: "qlora"},
        GOOD_METRICS, description="second",
    )  # fmt: skip
    backend.register_adapter(other, adapter_dir, lineage_tags(), GOOD_METRICS)
    assert (first.version, second.version, second.stage) == (1, 2, "candidate")
    if backend.tracking_uri.startswith("http"):
        assert first.source.startswith("mlflow-artifacts:/")  # proxied: the client needs no store credentials

    mine = {name, other}
    assert [v.ref for v in backend.list_versions(name=name)] == [f"{name}/2", f"{name}/1"]
    assert [v.ref for v in backend.list_versions(base_model="other-base") if v.name in mine] == [f"{name}/2"]
    assert [v.ref for v in backend.list_versions(base_model="f" * 64) if v.name in mine] == [
        f"{name}/1", f"{other}/1",
    ]  # fmt: skip
    assert [v.ref for v in backend.list_versions(method="qlora") if v.name in mine] == [f"{name}/2"]
    assert [v.ref for v in backend.list_versions(stage="candidate") if v.name in mine] == [
        f"{name}/2", f"{name}/1", f"{other}/1",
    ]  # fmt: skip
    # the listing's path (SQL on sqlite, the version summaries on a server) says what a full read says
    summary = {v.ref: v for v in backend.list_versions(summary=True) if v.name in mine}
    full = {v.ref: v for v in backend.list_versions() if v.name in mine}
    assert {r: listed(v) for r, v in summary.items()} == {r: listed(v) for r, v in full.items()}
    assert full[f"{name}/2"] == backend.get_version(name, 2)
    assert backend.get_version(name, 2).tags[Tag.sha256("adapter_config.json")] == sha256_file(
        adapter_dir / "adapter_config.json"
    )

    pulled = backend.pull(f"{name}/1", tmp_path / "pulled")
    files = sorted(p.name for p in (tmp_path / "pulled").iterdir())
    assert files == sorted(pulled.checksums)
    assert all(sha256_file(tmp_path / "pulled" / f) == pulled.checksums[f] for f in files)

    code, out, err = cli(backend, "list", "--json")
    assert code == 0, err
    assert {(v["name"], v["version"], v["stage"]) for v in json.loads(out) if v["name"] in mine} == {
        (name, 2, "candidate"), (name, 1, "candidate"), (other, 1, "candidate"),
    }  # fmt: skip
    code, out, err = cli(backend, "show", f"{name}/2", "--json")
    assert code == 0, err
    assert json.loads(out)["description"] == "second"


def test_promote_rollback_audit_and_attested_stages(backend: AdapterStore, adapter_dir: Path) -> None:
    name = fresh_name()
    for _ in range(3):
        backend.register_adapter(name, adapter_dir, lineage_tags(), GOOD_METRICS)
    for ref, to in [("1", "staging"), ("1", "production"), ("2", "staging"), ("2", "production")]:
        promotion.promote(backend, f"{name}/{ref}", to, policy=OPEN, actor=ME)
    back = promotion.rollback(backend, name, "production", reason="incident", policy=OPEN, actor=ME)
    assert (back.version, back.replaced_version) == (1, 2)
    assert {v.version: v.stage for v in backend.list_versions(name=name, summary=True)} == {
        1: "production", 2: "archived", 3: "candidate",
    }  # fmt: skip
    log = AuditLog(backend)
    trail = log.read(name)
    assert trail.intact, trail.problems
    assert [(e.seq, e.action, e.version) for e in trail.events] == [
        (1, "promote", 1), (2, "promote", 1), (3, "promote", 2), (4, "promote", 2), (5, "rollback", 1),
    ]  # fmt: skip
    assert all(check.ok for check in log.stage_checks(name).values())
    code, _, err = cli(backend, "audit", name)
    assert code == 0, err

    backend.set_stage(name, 3, "production")  # an alias moved without an audited promotion
    checks = log.stage_checks(name)
    assert (checks["production"].holder, checks["production"].attested, checks["production"].ok) == (
        3,
        1,
        False,
    )
    code, out, err = cli(backend, "list", "--stage", "production")
    assert code == 0 and f"{name}/3" in out and "production (UNATTESTED)" in out, err
    code, _, err = cli(backend, "audit", name)
    assert code == 1 and f"{name}@production is held by version 3" in err


def test_concurrent_promoters_keep_one_audit_chain(backend: AdapterStore, adapter_dir: Path) -> None:
    """8 writers promote and roll back one adapter at once: they take turns (registry.locking), so the audit
    trail stays one unbroken chain holding every event, and each stage's holder is what the last event says."""
    name = fresh_name()
    for _ in range(3):
        backend.register_adapter(name, adapter_dir, lineage_tags(), GOOD_METRICS)
    promotion.promote(backend, f"{name}/1", "production", force=True, reason="start", policy=OPEN, actor=ME)
    ops = [
        "promote 2",
        "promote 3",
        "rollback",
        "promote 1",
        "rollback",
        "promote 2",
        "promote 3",
        "rollback",
    ]
    outcomes: list[str] = []
    errors: list[str] = []
    start = threading.Barrier(len(ops))

    def writer(i: int, op: str) -> None:
        store = AdapterStore(backend.tracking_uri)  # a client of its own, as another process would have
        actor = Actor(f"writer{i}", False)
        start.wait()
        try:
            if op == "rollback":
                promotion.rollback(
                    store, name, "production", force=True, reason=f"w{i}", policy=OPEN, actor=actor
                )
            else:
                ref = f"{name}/{op.split()[1]}"
                promotion.promote(
                    store, ref, "production", force=True, reason=f"w{i}", policy=OPEN, actor=actor
                )
            outcomes.append("event")
        except RegistryError as exc:
            if exc.code != "INVALID_STATE":  # e.g. "already holds": refused before any event
                errors.append(f"{op}: {exc.message}")
            outcomes.append("none")
        except Exception as exc:
            errors.append(f"{op}: {exc!r}")

    threads = [threading.Thread(target=writer, args=(i, op)) for i, op in enumerate(ops)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors and len(outcomes) == len(ops), errors
    trail = AuditLog(backend).read(name)
    assert trail.intact, trail.problems  # no fork: one event per sequence number, every hash chained
    assert [e.seq for e in trail.events] == list(range(1, 2 + outcomes.count("event")))
    assert outcomes.count("event") >= 2  # each of versions 2 and 3 reaches production at least once
    last = replay(trail.events)["production"]
    assert backend.holder(name, "production").version == last.version == trail.events[-1].version
    assert all(check.ok for check in AuditLog(backend).stage_checks(name).values())
    assert sum(v.stage == "production" for v in backend.list_versions(name=name, summary=True)) == 1


# ------------------------------------------------------------------------------------------------ bad input
def test_a_registry_that_does_not_exist_is_an_error_not_an_empty_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    missing = f"sqlite:///{tmp_path}/missing/dir/mlflow.db"
    for args in (["--tracking-uri", missing, "list"], ["list"], ["show", "a/1"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1
        assert "error: no registry at sqlite:///" in result.stderr and "does not exist" in result.stderr
        assert "0 versions" not in result.stdout
    assert not (tmp_path / "missing").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.server
@pytest.mark.slow
def test_a_wrong_password_is_a_clear_401(team_stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    env = stack_env(team_stack)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", env["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    result = CliRunner().invoke(app, ["--tracking-uri", env["MLFLOW_TRACKING_URI"], "list"])
    assert result.exit_code == 1
    assert re.search(
        r"error: .*refused user 'admin' \(HTTP 401\): set MLFLOW_TRACKING_USERNAME", result.stderr
    )
    assert "Traceback" not in result.stderr + result.stdout


def test_an_unknown_sqlite_schema_takes_mlflows_path_with_a_notice(
    store: AdapterStore, adapter_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.register_adapter("a", adapter_dir, lineage_tags(), GOOD_METRICS)
    fast = [listed(v) for v in store.list_versions(summary=True)]
    db = Path(store.tracking_uri.removeprefix("sqlite:///"))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00dfeedbeef'")
    with caplog.at_level(logging.WARNING):
        slow = AdapterStore(store.tracking_uri)
    assert "schema revision f00dfeedbeef; the fast sqlite path knows" in caplog.text
    assert slow._fast is None
    assert [listed(v) for v in slow.list_versions(summary=True)] == fast


def test_the_fast_sqlite_path_knows_the_installed_mlflow_schema() -> None:
    """KNOWN_REVISIONS must name the head of the installed MLflow's migrations (check the SQL on an upgrade)."""
    import mlflow.store.db_migrations as migrations

    revisions, parents = set(), set()
    for path in (Path(migrations.__file__).parent / "versions").glob("*.py"):
        text = path.read_text()
        revisions |= set(re.findall(r'^revision = "(\w+)"', text, re.M))
        parents |= set(re.findall(r'^down_revision = "(\w+)"', text, re.M))
    assert revisions - parents == set(KNOWN_REVISIONS[-1:])


@pytest.mark.server
@pytest.mark.slow
def test_server_killed_mid_registration_leaves_no_version_and_a_retry_registers_once(
    adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail now, not after minutes of back-off
    workdir, handle = tmp_path / "server", {}
    server = start_server(workdir, handle=handle)
    url = next(server)
    port = int(url.rsplit(":", 1)[1])

    class DiesBeforeTheVersion(AdapterStore):
        """The server is killed (SIGKILL, its workers too) after the upload, before the version is created."""

        def _create_version(self, model_name, run_id, tags, description):  # type: ignore[no-untyped-def]
            stop_group(handle["process"], 9)
            return super()._create_version(model_name, run_id, tags, description)

    with pytest.raises(RegistryError, match=r"registering 'killed' from .* failed|unreachable") as info:
        DiesBeforeTheVersion(url).register_adapter("killed", adapter_dir, lineage_tags(), GOOD_METRICS)
    assert "Traceback" not in info.value.message
    server.close()

    restarted = start_server(workdir, port=port)  # the same database and artifact store
    assert next(restarted) == url
    try:
        store = AdapterStore(url)
        assert store.list_versions(name="killed") == []  # no version without its artifacts
        version = store.register_adapter("killed", adapter_dir, lineage_tags(), GOOD_METRICS)
        assert [v.version for v in store.list_versions(name="killed")] == [version.version] == [1]
        store.pull("killed/1", tmp_path / "pulled")  # every file there, every sha256 right
    finally:
        restarted.close()
        shutil.rmtree(workdir / "artifacts", ignore_errors=True)


@pytest.mark.server
@pytest.mark.slow
def test_stack_commands_on_the_running_stack(team_stack) -> None:  # type: ignore[no-untyped-def]
    """README's `eval "$(adapter-registry stack up)"` and `stack status`, on the stack the suite started."""
    folder = str(team_stack.folder)
    up = CliRunner().invoke(app, ["stack", "up", "--folder", folder])  # running already: nothing restarts
    assert up.exit_code == 0, up.stderr
    assert up.stdout.splitlines() == team_stack.exports()
    assert dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines()) == stack_env(
        team_stack
    )
    status = CliRunner().invoke(app, ["stack", "status", "--folder", folder, "--json"])
    data = json.loads(status.stdout)
    assert status.exit_code == 0 and data["postgres"] and data["mlflow"]
    assert data["tracking_uri"] == stack_env(team_stack)["MLFLOW_TRACKING_URI"]
    assert oct(Path(folder, "secrets.json").stat().st_mode & 0o777) == "0o600"
    assert oct(Path(folder, "audit.key").stat().st_mode & 0o777) == "0o600"  # the auth app's signing key
    assert "[adapter_registry]" in Path(folder, "basic_auth.ini").read_text()


@pytest.mark.server
@pytest.mark.slow
def test_readme_team_registry_commands(  # type: ignore[no-untyped-def]
    team_stack, adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README "Team registry", command by command, on the stack the suite started with `stack up` (it stops it
    with `stack down`). `kedro run` registers through AdapterStore.register_adapter, which this calls directly."""
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    runner = CliRunner()
    up = runner.invoke(app, ["stack", "up", "--folder", str(team_stack.folder)])
    assert up.exit_code == 0, up.stderr
    for line in up.stdout.splitlines():  # eval "$(adapter-registry stack up)"
        key, value = line.removeprefix("export ").split("=", 1)
        monkeypatch.setenv(key, value)
    assert runner.invoke(app, ["stack", "status", "--folder", str(team_stack.folder)]).exit_code == 0
    AdapterStore(os.environ["MLFLOW_TRACKING_URI"]).register_adapter(
        "intent_router", adapter_dir, lineage_tags(), GOOD_METRICS
    )

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.stderr
        return result.stdout

    assert "intent_router/1" in run("list")
    run("promote", "intent_router/1", "--to", "staging", "--reason", "passes gates")
    run("audit", "intent_router")
    trail = json.loads(run("audit", "intent_router", "--json"))
    assert [e["reason"] for e in trail["events"]] == ["passes gates"]
    assert trail["signed"]  # the stack runs the project's auth app: the server wrote and signed the event
    assert "verified" in run("pull", "intent_router@staging", "./adapter")
    assert sorted(p.name for p in (tmp_path / "project" / "adapter").iterdir()) == sorted(
        p.name for p in adapter_dir.iterdir()
    )


def test_read_commands_and_a_promotion_import_no_mlflow(store: AdapterStore, adapter_dir: Path) -> None:
    """A whole `list` process is about start-up: none of these imports mlflow (1.7 s), SQLAlchemy or torch."""
    import subprocess
    import sys

    for _ in range(3):
        store.register_adapter("quick", adapter_dir, lineage_tags(), GOOD_METRICS)
    promotion.promote(store, "quick/1", "staging", policy=OPEN, actor=ME)  # creates the audit experiment
    heavy = ("mlflow", "sqlalchemy", "torch", "transformers", "peft", "pandas")
    probe = (
        "import json, sys\nfrom adapter_registry.cli import app\n"
        "try:\n    app(sys.argv[1:], prog_name='adapter-registry')\nexcept SystemExit as exc:\n    code = exc.code\n"
        f"print(json.dumps([code, sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})]))"
    )
    uri = ["--tracking-uri", store.tracking_uri]
    for args in (["--help"], [*uri, "list"], [*uri, "show", "quick/2"], [*uri, "lineage", "quick/2"],
                 [*uri, "lineage", "--md5", "0cc175b9c0f1b6a831c399e269772661"],
                 [*uri, "promote", "quick/2", "--to", "staging", "--force", "--reason", "r"],
                 [*uri, "pull", "quick@staging", str(Path.cwd() / "pulled")]):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True
        )
        code, imported = json.loads(done.stdout.strip().splitlines()[-1])
        assert code in (0, None) and imported == [], (args, code, imported, done.stderr[-500:])
