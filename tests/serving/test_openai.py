"""The OpenAI API, /metrics, capacity and /health for real: the official ``openai`` client against uvicorn on
127.0.0.1, a sqlite MLflow registry, tiny adapters (one with a serving contract), two of three resident at most."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.contract import ServingContract
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.store import AdapterStore
from adapter_registry.serving.app import ServeOptions

from .conftest import attest, serve_in_thread
from .test_app import PROMPT, expected_text, free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]
TEMPLATE = "q {prompt} a"  # gamma's serving contract: "b c 1" is shown to the model as "q b c 1 a"


@pytest.fixture(scope="module")
def served(
    tiny_base: Path, adapters: dict[str, Path], empty_db: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, AdapterStore]]:
    """alpha, beta (no contract: raw prompts only) and gamma (a contract) in production, tenant acme -> alpha
    pinned, at most 2 resident; "broken" is in production but its registered files were tampered with."""
    root = tmp_path_factory.mktemp("openai")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # run artifacts land in root/mlruns
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        shutil.copyfile(empty_db, root / "mlflow.db")
        store = AdapterStore(f"sqlite:///{root / 'mlflow.db'}")
        tags = {Tag.BASE_FINGERPRINT: describe_folder(tiny_base).fingerprint, Tag.TASK: "causal_lm_sft"}
        gamma = Path(shutil.copytree(adapters["beta"], root / "gamma"))
        ServingContract(
            task="causal_lm_sft", format="completion", prompt_template=TEMPLATE, max_new_tokens=6
        ).write(gamma)
        for name, folder in [("alpha", adapters["alpha"]), ("beta", adapters["rs"]), ("gamma", gamma),
                             ("broken", adapters["qv"])]:  # fmt: skip
            version = store.register_adapter(name, folder, tags=tags, metrics={})
            attest(store, name, version.version)
        weights = next(root.rglob(f"{version.run_id}/artifacts/adapter/adapter_model.safetensors"))
        weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
        (root / "tenants.yml").write_text("tenants:\n  acme: alpha\n  globex: gamma\n")
        port = free_port()
        options = ServeOptions(
            tracking_uri=store.tracking_uri, port=port, poll_seconds=30, tenants_file=root / "tenants.yml",
            request_log=None, max_resident=2, pin=("acme",),
        )  # fmt: skip
        with serve_in_thread(tiny_base, options):
            yield f"http://127.0.0.1:{port}", store


@pytest.fixture(scope="module")
def client(served: tuple[str, AdapterStore]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served[0]}/v1", api_key="unused", max_retries=0, timeout=60)


def test_the_openai_client_lists_completes_chats_and_streams(served, client, tiny_base, adapters):
    url, store = served
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"alpha", "beta", "gamma", "acme", "globex"}  # the tenants are aliases
    assert models["acme"].model_extra["root"] == "alpha" and models["gamma"].model_extra["version"] == 1
    assert client.models.retrieve("globex").model_extra["root"] == "gamma"

    # /v1/completions: the prompt is raw, as OpenAI's; provenance in headers, system_fingerprint and the body
    raw = client.completions.with_raw_response.create(model="alpha", prompt=PROMPT, max_tokens=6)
    completion = raw.parse()
    assert completion.choices[0].text == expected_text(tiny_base, adapters["alpha"])
    digest = f"sha256:{store.get_version('alpha', 1).checksums['adapter_model.safetensors']}"
    assert (raw.headers["x-adapter-name"], raw.headers["x-adapter-version"]) == ("alpha", "1")
    assert raw.headers["x-adapter-digest"] == digest and completion.system_fingerprint == f"alpha/1@{digest}"
    assert completion.model_extra["provenance"]["request_id"] == raw.headers["x-request-id"]
    assert completion.usage.completion_tokens == 6 and completion.choices[0].finish_reason == "length"
    tenant = client.completions.create(model="acme", prompt=PROMPT, max_tokens=6)
    assert (tenant.model, tenant.choices[0].text) == ("alpha", completion.choices[0].text)

    # /v1/chat/completions: the last user message is the input, rendered by gamma's serving contract
    chat = client.chat.completions.create(
        model="globex", messages=[{"role": "system", "content": "ignored by a completion-format adapter"},
                                  {"role": "user", "content": "b c 1"}],
    )  # fmt: skip
    native = httpx.post(f"{url}/v1/generate", json={"adapter": "gamma", "input": "b c 1"}, timeout=60).json()
    templated = client.completions.create(model="gamma", prompt=TEMPLATE.replace("{prompt}", "b c 1"))
    assert chat.choices[0].message.content == native["text"] == templated.choices[0].text
    assert chat.model == "gamma" and chat.model_extra["provenance"]["tenant"] == "globex"

    # stream: true, chunk by chunk as the batch generates; the pieces add up to the answer
    pieces = list(client.completions.create(model="alpha", prompt=PROMPT, max_tokens=6, stream=True))
    assert "".join(c.choices[0].text for c in pieces) == completion.choices[0].text
    assert len(pieces) > 2 and pieces[-1].choices[0].finish_reason == "length"
    assert pieces[-1].model_extra["provenance"]["digest"] == digest
    response = client.chat.completions.with_raw_response.create(
        model="gamma", messages=[{"role": "user", "content": "b c 1"}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    assert response.headers["x-adapter-name"] == "gamma" and response.headers["x-adapter-version"] == "1"
    chunks = list(response.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == native["text"]
    assert chunks[-1].usage.completion_tokens == native["new_tokens"] and chunks[-1].choices == []

    # errors in OpenAI's shape
    with pytest.raises(openai.NotFoundError, match="adapter 'nobody' is not served") as missing:
        client.completions.create(model="nobody", prompt=PROMPT)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="temperature 0"):
        client.completions.create(model="alpha", prompt=PROMPT, temperature=0.7)
    with pytest.raises(openai.BadRequestError, match="without a serving contract"):
        client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "b c 1"}])


def test_cold_starts_metrics_and_health(served, client):
    url, _ = served
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "degraded" and (health["adapters"], health["resident"]) == (3, 2)
    assert [(p["adapter"], p["version"]) for p in health["problems"]] == [("broken", 1)]
    assert "sha256" in health["problems"][0]["reason"]  # its files do not match what was registered

    for model in ["beta", "gamma", "beta", "acme"]:  # 2 resident at most, acme's adapter pinned
        assert client.completions.create(model=model, prompt=PROMPT, max_tokens=2).choices[0].text
    listing = {a["name"]: a for a in httpx.get(f"{url}/v1/adapters").json()["adapters"]}
    assert listing["alpha"]["resident"] and listing["alpha"]["pinned"]
    assert sum(a["resident"] for a in listing.values()) == 2

    text = httpx.get(f"{url}/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())

    assert value("adapter_registry_requests_total", adapter="alpha", api="completions", status="200") >= 2
    assert value("adapter_registry_request_errors_total", adapter="", reason="not_served") >= 1
    assert value("adapter_registry_request_latency_seconds_count", adapter="alpha", version="1") >= 2
    assert value("adapter_registry_generated_tokens_total", adapter="alpha") >= 12
    assert value("adapter_registry_adapter_loads_total", adapter="beta", cause="cold") >= 2
    assert value("adapter_registry_adapter_evictions_total") >= 2
    assert value("adapter_registry_adapter_loads_total", adapter="alpha", cause="pinned") == 1
    assert (value("adapter_registry_servable_adapters"), value("adapter_registry_resident_adapters")) == (
        3,
        2,
    )
    assert value("adapter_registry_adapter_info", adapter="alpha", version="1", resident="true") == 1
    assert value("adapter_registry_queue_depth") == 0 and value("adapter_registry_queue_capacity") == 64
    assert value("adapter_registry_generated_rows_total") >= 8
