"""The same registry against a real ``mlflow server`` on 127.0.0.1: plain, and with the project's auth app
(``--app-name adapter-registry``: MLflow's basic-auth, the stages the server's promotion policy protects, the audit
trail written and signed by the server), with real users over HTTP. Issue 17's reproductions 1-3 are here."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from typer.testing import CliRunner

from adapter_registry.cli import app
from adapter_registry.registry import promotion
from adapter_registry.registry.audit import AuditLog, link
from adapter_registry.registry.entities import (
    AUDIT_EXPERIMENT,
    LOCK_MODEL,
    AdapterVersion,
    AuditTag,
    RegistryError,
    StageChange,
)
from adapter_registry.registry.policy import Actor, PromotionPolicy, authenticated_user
from adapter_registry.registry.store import AdapterStore

from .conftest import GOOD_METRICS, auth_app_config, lineage_tags, start_server

pytestmark = [pytest.mark.server, pytest.mark.slow]
ADMIN_PASSWORD = "admin-password-1234"
USERS = {"alice": "alice-password-1234", "bob": "bob-password-12345", "eve": "eve-password-123456"}
SERVER_POLICY = "enforce: auth_server\nstages:\n  production:\n    allowed_users: [alice]\n  staging:\n    allowed_users: null\n"


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


@dataclass
class GuardedServer:
    """An ``mlflow server --app-name adapter-registry`` on sqlite, and where its files are."""

    url: str
    folder: Path

    @property
    def database(self) -> Path:
        return self.folder / "server.db"

    def log(self) -> str:
        return (self.folder / "server.log").read_text()


@pytest.fixture(scope="module")
def auth_server(auth_app_visible: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedServer]:
    """One server for every test here; its policy (production: alice only) is in the server's own configuration."""
    folder = tmp_path_factory.mktemp("auth")
    env = {
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "a-secret-key-for-tests",
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        **auth_app_config(folder, SERVER_POLICY),
    }
    for url in start_server(folder, "--app-name", "adapter-registry", env=env):
        from mlflow.server import get_app_client

        users = get_app_client("basic-auth", tracking_uri=url)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
            patch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
            for user, password in USERS.items():
                users.create_user(user, password)
                users.grant_user_permission(user, "registered_model", LOCK_MODEL, "EDIT")  # writer tickets
        yield GuardedServer(url, folder)


def as_user(monkeypatch: pytest.MonkeyPatch, user: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USERS.get(user, ADMIN_PASSWORD))


def cli(url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["--tracking-uri", url, *args])
    return result.exit_code, result.stdout, result.stderr


def registered(
    server: GuardedServer,
    adapter_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    grants: dict[str, str],
    versions: int = 1,
) -> str:
    """A fresh adapter registered by the admin, the permissions ``grants`` (user -> READ, EDIT or MANAGE) on it."""
    from mlflow.server import get_app_client

    name = f"guarded_{uuid.uuid4().hex[:6]}"
    monkeypatch.chdir(adapter_dir.parent)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    as_user(monkeypatch, "admin")
    store = AdapterStore(server.url)
    for _ in range(versions):
        store.register_adapter(name, adapter_dir, lineage_tags(), GOOD_METRICS)
    users = get_app_client("basic-auth", tracking_uri=server.url)
    for user, permission in grants.items():
        users.grant_user_permission(user, "registered_model", name, permission)
    return name


def rest(
    server: GuardedServer, user: str, method: str, route: str, ui: bool = False, **body: str
) -> requests.Response:
    """One request to MLflow's REST API (``ui``: the ``/ajax-api`` route MLflow's UI calls) as ``user``."""
    prefix = "ajax-api" if ui else "api"
    return requests.request(method, f"{server.url}/{prefix}/2.0/mlflow/{route}", json=body, timeout=30,
                            auth=(user, USERS.get(user, ADMIN_PASSWORD)))  # fmt: skip


def audit(url: str, name: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = cli(url, "audit", name, "--json")
    return code, json.loads(out), err


def test_only_policy_users_promote_to_production_on_the_servers_policy(
    auth_server: GuardedServer, adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = auth_server.url
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(search, timeout=10).status_code == 401
    assert requests.get(search, auth=("admin", ADMIN_PASSWORD), timeout=10).status_code == 200

    # promote: move aliases (deleting one, the candidate alias a promoted version leaves, needs MANAGE)
    name = registered(auth_server, adapter_dir, monkeypatch, {"alice": "MANAGE", "bob": "MANAGE"})
    store = AdapterStore(url)

    def as_(user: str, *args: str) -> tuple[int, str]:
        as_user(monkeypatch, user)
        code, out, err = cli(url, *args)
        return code, out + err

    code, out = as_("bob", "promote", f"{name}/1", "--to", "staging", "--json")
    assert code == 0, out
    assert json.loads(out)["who"] == "bob"  # staging is open to anyone with EDIT
    code, out = as_("bob", "promote", f"{name}/1", "--to", "production")
    assert code == 1
    assert (
        f"error: promotion of {name}/1 to production refused: user 'bob' may not promote to production" in out
    )
    assert store.holder(name, "production") is None
    code, out = as_("alice", "promote", f"{name}/1", "--to", "production", "--reason", "release 7", "--json")
    assert code == 0 and json.loads(out)["who"] == "alice"
    assert store.holder(name, "production").version == 1

    trail = AuditLog(store).read(name)
    assert trail.signed and trail.intact, trail.problems
    assert [(e.who, e.action, e.to_stage) for e in trail.events] == [
        ("bob", "promote", "staging"), ("bob", "refused", "production"), ("alice", "promote", "production"),
    ]  # fmt: skip
    code, out = as_("bob", "audit", name)
    assert code == 0 and "this trail is signed by the tracking server" in out

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-123")
    with pytest.raises(RegistryError, match=r"tracking server refused user 'bob'"):
        authenticated_user(store.tracking_uri)


def test_the_policy_is_the_servers_not_the_callers(
    auth_server: GuardedServer, adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17, reproduction 1: a MANAGE user with a policy file of their own saying ``enforce: never`` cannot take
    production: --policy is refused against a server, ADAPTER_REGISTRY_POLICY ignored, and the server refuses the
    alias move itself (a caller passing a permissive policy to the Python API gets HTTP 403, and nothing moves)."""
    name = registered(auth_server, adapter_dir, monkeypatch, {"bob": "MANAGE"})
    permissive = tmp_path / "permissive.yml"
    permissive.write_text("enforce: never\n")
    as_user(monkeypatch, "bob")
    assert cli(auth_server.url, "promote", f"{name}/1", "--to", "staging")[0] == 0

    code, _, err = cli(
        auth_server.url, "promote", f"{name}/1", "--to", "production", "--policy", str(permissive)
    )
    assert code == 1 and "--policy" in err and "applies to a local registry only" in err
    monkeypatch.setenv("ADAPTER_REGISTRY_POLICY", str(permissive))
    code, _, err = cli(auth_server.url, "promote", f"{name}/1", "--to", "production")
    assert code == 1
    assert "warning: ADAPTER_REGISTRY_POLICY is ignored on a tracking server" in err
    assert "user 'bob' may not promote to production: the promotion policy allows alice" in err

    store = AdapterStore(auth_server.url)
    with pytest.raises(
        RegistryError, match=r"refused by the tracking server: user 'bob'.*undone: "
    ) as refused:
        promotion.promote(store, f"{name}/1", "production", policy=PromotionPolicy(enforce="never"))
    assert refused.value.code == "PERMISSION_DENIED"
    assert store.holder(name, "production") is None
    assert store.holder(name, "staging").version == 1  # given back: the promotion had left staging first
    events = AuditLog(store).read(name).events
    assert [(e.who, e.action, e.to_stage) for e in events][-1] == ("bob", "refused", "production")
    assert "via the REST API" in events[-1].reason


def test_rest_and_ui_cannot_move_a_protected_stage(
    auth_server: GuardedServer, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15 item 3: an EDIT (here MANAGE) user's REST alias move to production is 403, through the UI's route
    too, and so is every other route that would move it; an allowed user's passes; both show in ``audit``."""
    name = registered(auth_server, adapter_dir, monkeypatch, {"alice": "MANAGE", "bob": "MANAGE"}, versions=2)
    as_user(monkeypatch, "alice")
    for to in ("staging", "production"):
        assert cli(auth_server.url, "promote", f"{name}/1", "--to", to)[0] == 0

    refused = [
        rest(auth_server, "bob", "POST", "registered-models/alias", name=name, alias="production", version="2"),
        rest(auth_server, "bob", "POST", "registered-models/alias", ui=True, name=name, alias="production", version="2"),
        rest(auth_server, "bob", "DELETE", "registered-models/alias", ui=True, name=name, alias="production"),
        rest(auth_server, "bob", "DELETE", "model-versions/delete", name=name, version="1"),
        rest(auth_server, "bob", "POST", "registered-models/rename", name=name, new_name=f"{name}_x"),
        rest(auth_server, "bob", "DELETE", "registered-models/delete", name=name),
        rest(auth_server, "admin", "POST", "registered-models/alias", name=name, alias="production", version="2"),
    ]  # fmt: skip
    assert [r.status_code for r in refused] == [403] * len(refused), [r.text for r in refused]
    assert (
        "user 'bob' may not promote to production: the promotion policy allows alice"
        in refused[0].json()["message"]
    )
    store = AdapterStore(auth_server.url)
    assert store.holder(name, "production").version == 1
    assert (
        rest(
            auth_server, "bob", "POST", "registered-models/alias", name=name, alias="staging", version="2"
        ).status_code
        == 200
    )  # fmt: skip  (staging: anyone with EDIT)
    allowed = rest(
        auth_server, "alice", "POST", "registered-models/alias", name=name, alias="production", version="2"
    )
    assert allowed.status_code == 200 and store.holder(name, "production").version == 2

    code, trail, err = audit(auth_server.url, name)
    assert code == 1  # alice's REST move skipped the gates: production is held, unattested
    assert f"{name}@production is held by version 2, which no audited, gate-checked promotion placed" in err
    refusals = [(e["who"], e["to_stage"], e["reason"]) for e in trail["events"] if e["action"] == "refused"]
    assert [who for who, _, _ in refusals] == ["bob"] * 6 + ["admin"]
    assert "via the MLflow UI" in refusals[1][2] and "via the REST API" in refusals[0][2]
    assert trail["signed"] and all(e["verified"] for e in trail["events"])
    log = auth_server.log()
    assert (
        f"refused: setting alias 'production' of '{name}' to version 2 refused by the tracking server: user 'bob'"
        in log
    )
    assert (
        f"user 'alice': setting alias 'production' of '{name}' to version 2 (allowed by the promotion policy"
        in log
    )


def _soft_delete_and_gc(server: GuardedServer, run_ids: list[str]) -> None:
    """Delete audit runs around the server, as someone with the database would: MLflow's store marks them deleted,
    then ``mlflow gc`` removes them for good."""
    from click.testing import CliRunner as ClickRunner
    from mlflow.cli import gc
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db = SqlAlchemyStore(f"sqlite:///{server.database}", str(server.folder / "artifacts"))
    for run_id in run_ids:
        db.delete_run(run_id)
    done = ClickRunner().invoke(
        gc,
        [
            "--backend-store-uri",
            f"sqlite:///{server.database}",
            "--run-ids",
            ",".join(run_ids),
            "--tracking-uri",
            server.url,
        ],  # it resolves the runs' proxied artifacts through the server
    )
    assert done.exit_code == 0, done.output


def test_the_audit_trail_cannot_be_forged_or_shortened(
    auth_server: GuardedServer, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17, reproduction 2: an EDIT user cannot append a forged ``StageChange(who="admin")`` nor delete the
    last event over HTTP (the server writes the audit experiment alone); one written or deleted around the server,
    in its database, is named by ``audit``, which exits 1."""
    from mlflow.server import get_app_client
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    name = registered(auth_server, adapter_dir, monkeypatch, {"alice": "MANAGE", "eve": "EDIT"})
    as_user(monkeypatch, "alice")
    assert cli(auth_server.url, "promote", f"{name}/1", "--to", "staging")[0] == 0
    as_user(monkeypatch, "admin")
    store = AdapterStore(auth_server.url)
    experiment = store._client.get_experiment_by_name(AUDIT_EXPERIMENT).experiment_id
    get_app_client("basic-auth", tracking_uri=auth_server.url).grant_user_permission(
        "eve", "experiment", experiment, "EDIT"
    )  # what every promoter needed before: it no longer lets anyone write the trail
    (genuine,) = AuditLog(store).read(name).events
    forged = StageChange(model=name, version=1, from_stage="staging", to_stage="production", who="admin",
                         when=genuine.when, action="promote", seq=2)  # fmt: skip
    (run,) = store._client.search_runs([experiment], f"tags.`{AuditTag.MODEL}` = '{name}'")
    tags = link(forged, run.data.tags[AuditTag.HASH])  # a perfect unsigned link: only a key tells it apart
    as_tags = [{"key": k, "value": v} for k, v in tags.items()]
    assert (
        rest(auth_server, "eve", "POST", "runs/create", experiment_id=experiment, tags=as_tags).status_code
        == 403
    )
    assert rest(auth_server, "eve", "POST", "runs/set-tag", run_id=run.info.run_id, key=AuditTag.EVENT,
                value="{}").status_code == 403  # fmt: skip
    for user in ("eve", "admin"):
        assert rest(auth_server, user, "POST", "runs/delete", run_id=run.info.run_id).status_code == 403
    assert audit(auth_server.url, name)[0] == 0

    from mlflow.entities import RunTag

    db = SqlAlchemyStore(f"sqlite:///{auth_server.database}", str(auth_server.folder / "artifacts"))
    inserted = db.create_run(experiment, "eve", 0, [RunTag(k, v) for k, v in tags.items()], "forged")
    code, trail, err = audit(auth_server.url, name)
    assert code == 1
    assert (
        "event 2 (promote of version 1 to production, by 'admin') is not signed by the tracking server" in err
    )
    assert [e["verified"] for e in trail["events"]] == [True, False]

    _soft_delete_and_gc(
        auth_server, [inserted.info.run_id, run.info.run_id]
    )  # the forgery, and the last event
    code, trail, err = audit(auth_server.url, name)
    assert code == 1 and trail["events"] == []
    assert f"event 1 of '{name}' deleted: the tracking server signed 1 event(s), the trail holds 0" in err


def test_an_edit_only_promotion_refused_half_way_moves_nothing(
    auth_server: GuardedServer, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17, reproduction 3: an EDIT-only user (EDIT on the adapter and on the writer-lock model) promotes to
    staging; removing the candidate alias needs MANAGE, so the promotion is refused before anything moved."""
    name = registered(auth_server, adapter_dir, monkeypatch, {"eve": "EDIT"})
    as_user(monkeypatch, "eve")
    code, _, err = cli(auth_server.url, "promote", f"{name}/1", "--to", "staging")
    assert code == 1
    assert "removing alias 'candidate'" in err and "nothing was moved" in err, err
    store = AdapterStore(auth_server.url)
    version = store.get_version(name, 1)
    assert (version.stage, version.aliases, store.holder(name, "staging")) == (
        "candidate",
        ("candidate",),
        None,
    )
    assert [v.ref for v in store.list_versions(stage="staging") if v.name == name] == []
    code, trail, err = audit(auth_server.url, name)
    assert code == 0 and trail["events"] == [], err  # nothing moved, so nothing went unaudited


def test_a_canary_is_protected_like_production_and_signed_by_the_server(
    auth_server: GuardedServer, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A canary takes production traffic: only the users production's rule names start or stop one (the CLI and
    the ``canary`` alias over REST alike), and its events are signed like a promotion."""
    name = registered(auth_server, adapter_dir, monkeypatch, {"alice": "MANAGE", "bob": "MANAGE"}, versions=2)
    as_user(monkeypatch, "alice")
    for ref, to in ((1, "staging"), (1, "production"), (2, "staging")):
        assert cli(auth_server.url, "promote", f"{name}/{ref}", "--to", to)[0] == 0

    as_user(monkeypatch, "bob")
    code, _, err = cli(auth_server.url, "promote", f"{name}/2", "--to", "production", "--canary", "10")
    assert code == 1 and "user 'bob' may not promote to production" in err, err
    by_rest = rest(
        auth_server, "bob", "POST", "registered-models/alias", name=name, alias="canary", version="2"
    )
    assert by_rest.status_code == 403, by_rest.text
    store = AdapterStore(auth_server.url)
    assert store.holder(name, "canary") is None

    as_user(monkeypatch, "alice")
    code, out, err = cli(auth_server.url, "promote", f"{name}/2", "--to", "production", "--canary", "10")
    assert code == 0, out + err
    assert store.holder(name, "canary").version == 2
    as_user(monkeypatch, "bob")
    code, _, err = cli(auth_server.url, "canary", "stop", name, "--reason", "mine")
    assert code == 1 and "user 'bob' may not move a canary (it takes production traffic)" in err, err
    as_user(monkeypatch, "alice")
    code, out, err = cli(auth_server.url, "canary", "stop", name, "--reason", "enough")
    assert code == 0, out + err
    assert store.holder(name, "canary") is None

    trail = AuditLog(store).read(name)
    assert trail.signed and trail.intact, trail.problems
    assert [(e.who, e.action) for e in trail.events][-3:] == [
        ("alice", "canary_start"), ("bob", "refused"), ("alice", "canary_stop"),
    ]  # fmt: skip


def test_the_servers_listing_route_answers_what_mlflows_search_answers_each_user(
    auth_server: GuardedServer, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``list`` on a server with the auth app reads the summaries through its listing route
    (``registry.server_listing``): the same versions, stages and tags as through MLflow's search of registered
    models, only the models the user may read, page by page."""
    from adapter_registry.registry.search import VersionFilter, search_summaries

    hidden = registered(auth_server, adapter_dir, monkeypatch, {"bob": "DENY"}, versions=2)
    shown = registered(auth_server, adapter_dir, monkeypatch, {"bob": "READ"})

    def seen(v: AdapterVersion) -> tuple[object, ...]:
        return (
            v.ref,
            v.stage,
            v.aliases,
            v.metrics,
            v.base_id,
            v.base_fingerprint,
            v.method,
            v.task,
            v.created,
        )

    for user in ("admin", "bob"):
        as_user(monkeypatch, user)
        store = AdapterStore(auth_server.url)
        client = store._fast
        via_route = search_summaries(client, VersionFilter())
        assert client._no_summaries is False  # the route answered
        client._no_summaries = True  # as against a server without the route: MLflow's search
        via_search = search_summaries(client, VersionFilter())
        assert sorted(map(seen, via_route)) == sorted(map(seen, via_search))
        names = {v.name for v in via_route}
        assert shown in names and (hidden in names) == (user == "admin")
        pages, token = [], None
        while True:
            answer = client.call("GET", "summaries", {"max_results": 1, **({"page_token": token} if token else {})},
                                 api="/api/2.0/adapter-registry")  # fmt: skip
            assert len(answer["models"]) <= 1
            pages += [m["name"] for m in answer["models"]]
            token = answer.get("next_page_token")
            if not token:
                break
        assert set(pages) >= names and len(pages) == len(set(pages))
    as_user(monkeypatch, "bob")
    refused = requests.get(f"{auth_server.url}/api/2.0/adapter-registry/summaries", params={"name": hidden},
                           auth=("bob", USERS["bob"]), timeout=30)  # fmt: skip
    assert refused.status_code == 403 and "READ" in refused.json()["message"]
