"""Registry webhooks for real: an ``mlflow server`` (sqlite backend) calls ``serve`` when an alias moves, signed with
the secret ``serve`` registered; a forged or replayed delivery changes nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.store import AdapterStore
from adapter_registry.serving.app import ServeOptions, build_server
from adapter_registry.serving.webhooks import TOLERANCE_S, sign, signature_problem

from .conftest import attest
from .test_app import free_port

SECRET = "s3cret"
PAYLOAD = b'{"entity": "model_version_alias", "action": "created"}'


def test_signatures_are_checked_as_mlflow_signs_them() -> None:
    stamp = str(int(time.time()))
    good = {"X-MLflow-Signature": sign(SECRET, "d1", stamp, PAYLOAD), "X-MLflow-Timestamp": stamp,
            "X-MLflow-Delivery-Id": "d1"}  # fmt: skip
    assert signature_problem(SECRET, good, PAYLOAD) is None
    assert "does not match" in (signature_problem("other", good, PAYLOAD) or "")
    assert "does not match" in (signature_problem(SECRET, good, PAYLOAD + b" ") or "")
    old = str(int(time.time()) - TOLERANCE_S - 60)
    replay = {**good, "X-MLflow-Timestamp": old, "X-MLflow-Signature": sign(SECRET, "d1", old, PAYLOAD)}
    assert "a replay?" in (signature_problem(SECRET, replay, PAYLOAD) or "")
    assert "unsigned delivery" in (signature_problem(SECRET, {}, PAYLOAD) or "")


@pytest.mark.server
@pytest.mark.slow
def test_an_alias_move_reaches_serve_by_webhook_without_polling(
    mlflow_server: str, tiny_base: Path, adapters: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    store = AdapterStore(mlflow_server)
    tags = {Tag.BASE_FINGERPRINT: describe_folder(tiny_base).fingerprint, Tag.TASK: "causal_lm_sft"}
    attest(store, "alpha", store.register_adapter("alpha", adapters["alpha"], tags=tags, metrics={}).version)
    port = free_port()
    (tmp_path / "tenants.yml").write_text("tenants: {}\n")
    options = ServeOptions(
        tracking_uri=mlflow_server, port=port, poll_seconds=600, tenants_file=tmp_path / "tenants.yml",
        request_log=None, webhook_url=f"http://127.0.0.1:{port}/v1/registry/events",
    )  # fmt: skip
    server = build_server(str(tiny_base), options)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while not server.started:
            assert thread.is_alive() and time.time() < deadline, "the server did not start"
            time.sleep(0.05)
        assert [w.name for w in _webhooks(store)] == [
            next(iter(_webhooks(store))).name
        ]  # one, registered by serve
        time.sleep(1.5)  # the tracking server's webhook cache (1 s here) sees it
        v2 = store.register_adapter("alpha", adapters["beta"], tags=tags, metrics={})
        attest(store, "alpha", v2.version)  # an audited promotion moves the alias: MLflow calls serve
        deadline = time.time() + 30
        while httpx.get(f"{url}/v1/adapters").json()["adapters"][0]["version"] != 2:
            assert time.time() < deadline, "the alias move did not reach serve (polling is at 600 s)"
            time.sleep(0.2)
        assert httpx.get(f"{url}/health").json()["webhooks"]["accepted"] >= 1

        stamp = str(int(time.time()))
        forged = httpx.post(f"{url}/v1/registry/events", content=PAYLOAD, headers={
            "X-MLflow-Signature": sign("guessed", "d9", stamp, PAYLOAD), "X-MLflow-Timestamp": stamp,
            "X-MLflow-Delivery-Id": "d9"})  # fmt: skip
        assert forged.status_code == 401 and "signature does not match" in forged.json()["detail"]
        # the secret serve registered: a genuine delivery, sent twice
        secret = _app_state(server).webhook_secret
        signed = {"X-MLflow-Signature": sign(secret, "d10", stamp, PAYLOAD), "X-MLflow-Timestamp": stamp,
                  "X-MLflow-Delivery-Id": "d10"}  # fmt: skip
        first = httpx.post(f"{url}/v1/registry/events", content=PAYLOAD, headers=signed)
        again = httpx.post(f"{url}/v1/registry/events", content=PAYLOAD, headers=signed)
        assert first.status_code == 202 and again.status_code == 401 and "a replay" in again.json()["detail"]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert _webhooks(store) == []  # serve removed its webhook on shutdown


def _app_state(server: object) -> Any:
    """The service behind a started uvicorn server (uvicorn wraps our FastAPI app in its middleware)."""
    app = server.config.loaded_app  # type: ignore[attr-defined]
    while not hasattr(app, "state"):
        app = app.app
    return app.state.service


def _webhooks(store: AdapterStore) -> list:
    from mlflow import MlflowClient

    return list(MlflowClient(store.tracking_uri).list_webhooks())
