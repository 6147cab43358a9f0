"""The same registry against a real ``mlflow server`` on 127.0.0.1, with and without MLflow's basic-auth."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from adapter_registry.cli import app
from adapter_registry.registry import promotion
from adapter_registry.registry.audit import AuditLog
from adapter_registry.registry.entities import AUDIT_EXPERIMENT, LOCK_MODEL, RegistryError
from adapter_registry.registry.policy import Actor, PromotionPolicy, authenticated_user
from adapter_registry.registry.store import AdapterStore

from .conftest import GOOD_METRICS, lineage_tags, start_server

pytestmark = [pytest.mark.server, pytest.mark.slow]
ADMIN_PASSWORD = "admin-password-1234"
USERS = {"alice": "alice-password-1234", "bob": "bob-password-12345"}


def test_registry_round_trip_on_a_plain_server(
    mlflow_server: str, adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    store = AdapterStore(mlflow_server)
    first = store.register_adapter("served", adapter_dir, lineage_tags(), GOOD_METRICS)
    second = store.register_adapter("served", adapter_dir, lineage_tags(), GOOD_METRICS)
    assert first.source.startswith("mlflow-artifacts:/") and second.version == 2
    policy, me = PromotionPolicy(enforce="never"), Actor("carol", False)
    for ref, to in [
        ("served/1", "staging"),
        ("served/1", "production"),
        ("served/2", "staging"),
        ("served/2", "production"),
    ]:
        promotion.promote(store, ref, to, policy=policy, actor=me)
    promotion.rollback(store, "served", "production", policy=policy, actor=me)
    assert store.holder("served", "production").version == 1
    assert {v.version: v.stage for v in store.list_versions(name="served")} == {
        1: "production",
        2: "archived",
    }
    trail = AuditLog(store).read("served")
    assert trail.intact and [e.action for e in trail.events] == ["promote"] * 4 + ["rollback"]
    pulled = store.pull("served@production", tmp_path / "pulled")
    assert sorted(p.name for p in (tmp_path / "pulled").iterdir()) == sorted(pulled.checksums)
    assert authenticated_user(store.tracking_uri) is None  # no auth app on this server
    with pytest.raises(RegistryError, match=r"adapter 'ghost' is not registered"):
        store.resolve("ghost/1")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "a-secret-key-for-tests",
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }
    yield from start_server(tmp_path_factory.mktemp("auth"), "--app-name", "basic-auth", env=env)


def test_only_policy_users_promote_to_production_on_a_basic_auth_server(
    auth_server: str, adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    search = f"{auth_server}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(search, timeout=10).status_code == 401
    assert requests.get(search, auth=("admin", ADMIN_PASSWORD), timeout=10).status_code == 200

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    from mlflow.server import get_app_client

    auth = get_app_client("basic-auth", tracking_uri=auth_server)
    store = AdapterStore(auth_server)
    store.register_adapter("guarded", adapter_dir, lineage_tags(), GOOD_METRICS)
    store.append_audit_run("setup", {"ar.audit.setup": "1"})  # makes sure the audit experiment exists
    audit_experiment = store._client.get_experiment_by_name(AUDIT_EXPERIMENT).experiment_id
    for user, password in USERS.items():
        auth.create_user(user, password)
        # EDIT may set an alias but deleting one (the candidate alias a promoted version leaves) needs MANAGE
        auth.grant_user_permission(user, "registered_model", "guarded", "MANAGE")
        auth.grant_user_permission(user, "experiment", audit_experiment, "EDIT")
        auth.grant_user_permission(user, "registered_model", LOCK_MODEL, "EDIT")  # writer tickets

    policy = tmp_path / "policy.yml"
    policy.write_text("enforce: auth_server\nstages:\n  production:\n    allowed_users: [alice]\n")

    def as_user(user: str, *args: str) -> tuple[int, str]:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USERS.get(user, ADMIN_PASSWORD))
        result = CliRunner().invoke(app, ["--tracking-uri", auth_server, *args, "--policy", str(policy)])
        return result.exit_code, result.stdout + result.stderr

    code, out = as_user("bob", "promote", "guarded/1", "--to", "staging", "--json")
    assert code == 0, out
    assert json.loads(out)["who"] == "bob"  # staging is open to anyone with EDIT
    code, out = as_user("bob", "promote", "guarded/1", "--to", "production")
    assert code == 1
    assert (
        "error: promotion of guarded/1 to production refused: user 'bob' may not promote to production" in out
    )
    assert store.holder("guarded", "production") is None
    code, out = as_user(
        "alice", "promote", "guarded/1", "--to", "production", "--reason", "release 7", "--json"
    )
    assert code == 0 and json.loads(out)["who"] == "alice"
    assert store.holder("guarded", "production").version == 1

    events = AuditLog(store).read("guarded").events
    assert [(e.who, e.action, e.to_stage) for e in events] == [
        ("bob", "promote", "staging"), ("bob", "refused", "production"), ("alice", "promote", "production"),
    ]  # fmt: skip

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-123")
    with pytest.raises(RegistryError, match=r"tracking server refused user 'bob'"):
        authenticated_user(store.tracking_uri)
