"""The HTTP server for real: uvicorn on 127.0.0.1, a sqlite MLflow registry in tmp_path, tiny adapters."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.store import AdapterStore
from adapter_registry.serving.app import ServeOptions, build_server
from adapter_registry.serving.pool import AdapterPool

from .conftest import attest, serve_in_thread

pytestmark = [pytest.mark.server, pytest.mark.slow]
PROMPT = "a b c 1 2 3"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def register(
    store: AdapterStore, name: str, folder: Path, fingerprint: str, task: str = "causal_lm_sft"
) -> int:
    """Register ``folder`` as a new version of ``name`` and give it the production stage."""
    tags = {Tag.BASE_FINGERPRINT: fingerprint, Tag.TASK: task, Tag.METHOD: "lora"}
    version = store.register_adapter(name, folder, tags=tags, metrics={})
    attest(store, name, version.version)
    return version.version


@pytest.fixture
def server(
    caplog: pytest.LogCaptureFixture,
    registry: AdapterStore,
    tiny_base: Path,
    adapters: dict[str, Path],
    tmp_path: Path,
) -> Iterator[str]:
    """The server, started after alpha, beta and a foreign-base adapter were put in production."""
    caplog.set_level(logging.INFO, logger="adapter_registry.serving")
    fingerprint = describe_folder(tiny_base).fingerprint
    register(registry, "alpha", adapters["alpha"], fingerprint)
    register(registry, "beta", adapters["beta"], fingerprint)
    register(registry, "stranger", adapters["qv"], "sha256:" + "0" * 64)
    tenants = tmp_path / "tenants.yml"
    tenants.write_text("tenants:\n  acme: alpha  # comment\n  globex: beta\n")
    port = free_port()
    options = ServeOptions(
        tracking_uri=registry.tracking_uri, port=port, poll_seconds=0.3, tenants_file=tenants,
        request_log=tmp_path / "requests.jsonl",
    )  # fmt: skip
    with serve_in_thread(tiny_base, options):
        yield f"http://127.0.0.1:{port}"


def generate(url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/generate", json={"prompt": PROMPT, "max_new_tokens": 6, **body}, timeout=60)


def expected_text(base: Path, adapter: Path, prompt: str = PROMPT) -> str:
    """The same completion from a pool of our own, outside the server."""
    pool = AdapterPool.from_pretrained(base)
    pool.add("x", adapter)
    return pool.generate([prompt], ["x"], max_new_tokens=6)[0].text


def test_serves_production_adapters_over_http_and_follows_the_alias(
    server, registry, tiny_base, adapters, caplog
):
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["adapters"] == 2

    listing = httpx.get(f"{server}/v1/adapters").json()
    assert [(a["name"], a["version"]) for a in listing["adapters"]] == [("alpha", 1), ("beta", 1)]
    assert {a["fingerprint"] for a in listing["adapters"]} == {describe_folder(tiny_base).fingerprint}
    assert [r["name"] for r in listing["refused"]] == ["stranger"]
    assert "trained on base sha256:000" in listing["refused"][0]["reason"]

    alpha, beta = generate(server, adapter="alpha"), generate(server, adapter="beta")
    assert alpha.status_code == beta.status_code == 200, (alpha.text, beta.text)
    assert alpha.json()["text"] != beta.json()["text"]  # the adapter decides the output
    assert alpha.json()["text"] == expected_text(tiny_base, adapters["alpha"])
    assert alpha.json()["version"] == 1
    tenant = generate(server, tenant="acme").json()
    assert (tenant["adapter"], tenant["text"]) == ("alpha", alpha.json()["text"])

    # concurrent requests are batched together (mixed adapters) and still get their own adapter's answer
    names = ["alpha", "beta"] * 4
    with ThreadPoolExecutor(8) as executor:
        texts = list(executor.map(lambda n: generate(server, adapter=n).json()["text"], names))
    assert texts == [alpha.json()["text"], beta.json()["text"]] * 4
    assert httpx.get(f"{server}/health").json()["largest_batch"] > 1

    # the production alias moves: the new version is picked up without a restart
    assert register(registry, "alpha", adapters["rs"], describe_folder(tiny_base).fingerprint) == 2
    deadline = time.time() + 30
    while True:
        served = {a["name"]: a["version"] for a in httpx.get(f"{server}/v1/adapters").json()["adapters"]}
        if served["alpha"] == 2:
            break
        assert time.time() < deadline, f"version 2 not picked up: {served}"
        alpha_now = generate(server, adapter="alpha")  # meanwhile the old version keeps serving
        assert alpha_now.status_code == 200 and alpha_now.json()["version"] in (1, 2)
        time.sleep(0.1)
    moved = generate(server, adapter="alpha").json()
    assert moved["version"] == 2
    assert moved["text"] == expected_text(tiny_base, adapters["rs"]) != alpha.json()["text"]
    assert any(
        "loaded alpha/2" in r.getMessage() and "replacing alpha/1" in r.getMessage() for r in caplog.records
    )
    refusals = [r for r in caplog.get_records("setup") if "refused stranger/1" in r.getMessage()]
    assert len(refusals) == 1  # logged once, not at every poll


def test_http_errors_name_the_problem(server):
    missing = generate(server, adapter="nobody")
    assert missing.status_code == 404 and "adapter 'nobody' is not served" in missing.json()["detail"]
    refused = generate(server, adapter="stranger")
    assert refused.status_code == 409 and "version 1 is refused: trained on base" in refused.json()["detail"]
    tenant = generate(server, tenant="unknown")
    assert tenant.status_code == 404 and "tenant 'unknown'" in tenant.json()["detail"]
    both = generate(server, adapter="alpha", tenant="acme")
    assert both.status_code == 422 and "exactly one of 'adapter' or 'tenant'" in both.text
    extra = generate(server, adapter="alpha", temperature=0.7)
    assert extra.status_code == 422 and "temperature" in extra.text


def test_a_prompt_too_long_is_answered_413_and_its_batch_is_served(server):
    """The tiny base's context window is 128 tokens; the requests batched with the long one are answered."""
    long_prompt = " ".join(["a"] * 125)
    with ThreadPoolExecutor(4) as executor:
        bodies = [{"adapter": "alpha", "prompt": long_prompt}, {"adapter": "alpha"}, {"adapter": "beta"}] * 2
        answers = list(executor.map(lambda body: generate(server, **body), bodies))
    assert [a.status_code for a in answers] == [413, 200, 200] * 2, [a.text for a in answers]
    detail = answers[0].json()["detail"]
    assert (
        "the prompt has 125 tokens and may generate 6: 131 overrun the base's context window of 128" in detail
    )
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_every_response_names_what_answered_it_and_the_request_log_has_a_line_per_request(
    server, registry, tiny_base, tmp_path
):
    import json

    answer = generate(server, tenant="acme")
    assert answer.status_code == 200
    body = answer.json()
    weights = registry.get_version("alpha", 1).checksums["adapter_model.safetensors"]
    fingerprint = describe_folder(tiny_base).fingerprint
    assert (body["adapter"], body["version"], body["digest"]) == ("alpha", 1, f"sha256:{weights}")
    assert body["base_fingerprint"] == fingerprint and len(body["request_id"]) == 32
    headers = answer.headers
    assert (headers["x-adapter-name"], headers["x-adapter-version"]) == ("alpha", "1")
    assert headers["x-adapter-digest"] == f"sha256:{weights}" and headers["x-base-fingerprint"] == fingerprint
    assert headers["x-request-id"] == body["request_id"]
    missing = generate(server, adapter="nobody")
    assert missing.status_code == 404 and missing.headers["x-request-id"]

    lines = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    served = next(line for line in lines if line["request_id"] == body["request_id"])
    assert {k: served[k] for k in ("tenant", "adapter", "version", "digest", "status")} == {
        "tenant": "acme", "adapter": "alpha", "version": 1, "digest": f"sha256:{weights}", "status": 200,
    }  # fmt: skip
    assert served["latency_ms"] > 0 and "time" in served
    assert not {"input", "prompt", "text"} & set(served)  # no prompt text unless --log-prompts
    refused = next(line for line in lines if line["request_id"] == missing.headers["x-request-id"])
    assert (refused["status"], refused["adapter"]) == (404, "nobody")


def test_a_tenant_of_an_unknown_adapter_stops_the_server_at_start_up(registry, tiny_base, tmp_path):
    from adapter_registry.serving.tenants import TenantsError

    tenants = tmp_path / "tenants.yml"
    tenants.write_text("tenants:\n  acme: support_sft_lora\n")
    with pytest.raises(
        TenantsError, match=r"acme -> 'support_sft_lora': no such registered adapter; registered: none"
    ):
        build_server(str(tiny_base), ServeOptions(tracking_uri=registry.tracking_uri, tenants_file=tenants))


def test_registry_webhooks_with_a_bad_signature_are_ignored(server, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="adapter_registry.serving")
    forged = httpx.post(f"{server}/v1/registry/events", json={"entity": "model_version_alias"})
    assert forged.status_code == 404  # this server registered no webhook: nothing is accepted
    assert httpx.get(f"{server}/health").json()["webhooks"] == {"accepted": 0, "rejected": 1}
    assert "registry webhook ignored" in caplog.text


def test_health_is_degraded_and_names_a_stage_holder_that_cannot_be_loaded(registry, tiny_base, adapters):
    """Files tampered with after the promotion: a (re)started server cannot load that adapter, and says so."""
    from fastapi.testclient import TestClient

    from adapter_registry.serving.app import create_app
    from adapter_registry.serving.sync import RegistrySource

    fingerprint = describe_folder(tiny_base).fingerprint
    register(registry, "alpha", adapters["alpha"], fingerprint)
    register(registry, "beta", adapters["beta"], fingerprint)
    weights = (
        Path(registry.get_version("beta", 1).source.removeprefix("file://")) / "adapter_model.safetensors"
    )
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    pool = AdapterPool.from_pretrained(tiny_base, fingerprint=fingerprint)
    with TestClient(create_app(pool, RegistrySource(registry), poll_seconds=60)) as client:
        health = client.get("/health").json()
    assert (health["status"], health["adapters"]) == ("degraded", 1)
    assert [(u["name"], u["version"]) for u in health["unloadable"]] == [("beta", 1)]
    assert "adapter_model.safetensors" in health["unloadable"][0]["error"]


def test_an_adapter_whose_production_alias_no_promotion_placed_is_refused_409(server, registry, adapters):
    """Production set with MLflow's own client on an adapter never promoted: nothing attested, nothing served."""
    from mlflow import MlflowClient

    fingerprint = next(iter(httpx.get(f"{server}/v1/adapters").json()["adapters"]))["fingerprint"]
    version = registry.register_adapter(
        "gamma",
        adapters["rs"],
        tags={Tag.BASE_FINGERPRINT: fingerprint, Tag.TASK: "causal_lm_sft"},
        metrics={},
    )
    MlflowClient(registry.tracking_uri).set_registered_model_alias(
        "gamma", "production", str(version.version)
    )
    deadline = time.time() + 30
    while not any(r["name"] == "gamma" for r in httpx.get(f"{server}/v1/adapters").json()["refused"]):
        assert time.time() < deadline, "the unattested holder was not refused (it settles for 2 s first)"
        time.sleep(0.2)
    answer = generate(server, adapter="gamma")
    assert answer.status_code == 409
    assert (
        "version 1 is refused: gamma@production is held by version 1, which no audited"
        in answer.json()["detail"]
    )
    assert answer.json()["detail"].endswith("nothing attested to serve")
