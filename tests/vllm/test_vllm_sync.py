"""``vllm-sync``'s HTTP client against a stand-in for vLLM's adapter endpoints.

This is an HTTP contract test of our client, not a fake engine: the stand-in generates nothing and loads no
weights. It speaks only what vLLM documents for runtime LoRA loading (https://docs.vllm.ai/en/latest/features/lora/,
``OpenAIServingModels`` in vllm/entrypoints/openai/serving_models.py) and records every call:

- ``GET /v1/models``: the base card (no ``parent``) and one card per loaded LoRA (``id``: its LoRA name, ``root``:
  its path, ``parent``: the base);
- ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}``: 200, or 400 when the name is loaded already;
- ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``: 200, or 404 for a name that is not loaded.

vLLM keys an adapter by the name it was loaded or requested under; a resolver may return a LoRA whose own name (the
card's ``id``) differs from that key: ``resolved_by_plugin`` seeds that state.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner
from vllm_helpers import attest, register

from adapter_registry.cli import app
from adapter_registry.registry import promotion
from adapter_registry.registry.policy import Actor, PromotionPolicy
from adapter_registry.registry.store import AdapterStore
from adapter_registry.vllm.resolver import RegistryResolver
from adapter_registry.vllm.sync import FleetSync, VllmServer

pytestmark = pytest.mark.server  # the stand-in listens on 127.0.0.1


class AdapterEndpoints:
    """The stand-in's state: key -> (card id, path), and every call it answered."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.entries: dict[str, tuple[str, str]] = {}
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.runtime_updating = (
            True  # vLLM adds the two POST routes only with VLLM_ALLOW_RUNTIME_LORA_UPDATING
        )

    def resolved_by_plugin(self, requested: str, lora_name: str, path: Path) -> None:
        """What vLLM holds after a resolver answered a request for ``requested`` with LoRA ``lora_name``."""
        self.entries[requested] = (lora_name, str(path))

    def handle(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        with self.lock:
            self.calls.append((path, body.get("lora_name", "")))
            if method == "GET" and path == "/v1/models":
                cards = [{"id": "base", "object": "model", "root": self.base, "parent": None}]
                cards += [
                    {"id": i, "object": "model", "root": p, "parent": "base"}
                    for i, p in self.entries.values()
                ]
                return 200, {"object": "list", "data": cards}
            name = body.get("lora_name")
            if not self.runtime_updating:
                return 404, {"detail": "Not Found"}
            if path == "/v1/load_lora_adapter":
                if name in self.entries:
                    return 400, {"error": {"message": f"The lora adapter '{name}' has already been loaded."}}
                self.entries[name] = (name, body["lora_path"])
                return 200, f"Success: LoRA adapter '{name}' added successfully."
            if path == "/v1/unload_lora_adapter":
                if name not in self.entries:
                    return 404, {"error": {"message": f"The lora adapter '{name}' cannot be found."}}
                del self.entries[name]
                return 200, f"Success: LoRA adapter '{name}' removed successfully."
            return 404, {"detail": "Not Found"}

    def changes(self) -> list[tuple[str, str]]:
        """The load and unload calls answered so far (reads dropped), then forgotten."""
        out = [c for c in self.calls if c[0] != "/v1/models"]
        self.calls.clear()
        return out


@pytest.fixture
def endpoints(vllm_base: Path) -> Iterator[tuple[AdapterEndpoints, str]]:
    state = AdapterEndpoints(str(vllm_base))

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else {}
            status, payload = state.handle(method, self.path, body)
            data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fleet(registry: AdapterStore, tmp_path: Path, *urls: str, aliases: bool = False) -> FleetSync:
    resolver = RegistryResolver(
        registry, tmp_path / "cache", tenants={"acme": "acme_support_lora"}, max_lora_rank=16
    )
    return FleetSync(resolver, [VllmServer(u) for u in urls], aliases=aliases)


def digest_name(registry: AdapterStore, name: str, version: int) -> str:
    return f"{name}@sha256:{registry.get_version(name, version).checksums['adapter_model.safetensors']}"


def test_holders_are_loaded_by_digest_and_follow_audited_moves(
    endpoints: tuple[AdapterEndpoints, str], registry: AdapterStore, vllm_base: Path, lora_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:  # fmt: skip
    state, url = endpoints
    for name, folder in (("acme_support_lora", lora_dirs["one"]), ("globex", lora_dirs["two"])):
        register(registry, name, folder, vllm_base)
        attest(registry, name, 1)
    sync = fleet(registry, tmp_path, url)
    acme1, globex1 = digest_name(registry, "acme_support_lora", 1), digest_name(registry, "globex", 1)

    report = sync.sync_once()
    assert state.changes() == [("/v1/load_lora_adapter", acme1), ("/v1/load_lora_adapter", globex1)]
    [server] = report.servers
    assert server.errors == [] and server.base == str(vllm_base)
    assert server.loaded == [
        {
            "name": acme1,
            "version": "acme_support_lora/1",
            "digest": acme1.rpartition("@")[2],
            "current": "yes",
        },
        {"name": globex1, "version": "globex/1", "digest": globex1.rpartition("@")[2], "current": "yes"},
    ]
    assert sync.sync_once().servers[0].added == [] and state.changes() == []  # nothing moved: nothing sent

    register(registry, "acme_support_lora", lora_dirs["wide"], vllm_base)  # rank 32: vLLM refuses at 16
    attest(registry, "acme_support_lora", 2)
    report = sync.sync_once()
    assert state.changes() == []  # the refused holder leaves version 1 serving
    assert "rank 32 is greater than --max-lora-rank 16" in report.refused["acme_support_lora/2"]

    register(registry, "acme_support_lora", lora_dirs["two"], vllm_base)
    attest(registry, "acme_support_lora", 3)
    acme3 = digest_name(registry, "acme_support_lora", 3)
    report = sync.sync_once()
    assert state.changes() == [
        ("/v1/load_lora_adapter", acme3),
        ("/v1/unload_lora_adapter", acme1),
    ]  # new first
    assert {r["name"]: r["version"] for r in report.servers[0].loaded} == {
        acme3: "acme_support_lora/3",
        globex1: "globex/1",
    }

    register(registry, "acme_support_lora", lora_dirs["one"], vllm_base)
    registry.set_stage("acme_support_lora", 4, "production")  # moved outside adapter-registry: held back
    report = sync.sync_once()
    assert state.changes() == [] and "version 4: " in report.held_back["acme_support_lora"]

    registry.drop_alias("globex", "production")  # emptied outside adapter-registry: the attested one stays
    sync.sync_once()
    assert state.changes() == []
    promotion.retire(registry, "globex", "production", reason="tenant left",
                     policy=PromotionPolicy(enforce="never"), actor=Actor("tester", False))  # fmt: skip
    sync.sync_once()
    assert state.changes() == [("/v1/unload_lora_adapter", globex1)]


def test_names_the_resolver_plugin_loaded_are_unloaded_when_their_alias_moves(
    endpoints: tuple[AdapterEndpoints, str], registry: AdapterStore, vllm_base: Path, lora_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:  # fmt: skip
    state, url = endpoints
    register(registry, "acme_support_lora", lora_dirs["one"], vllm_base)
    attest(registry, "acme_support_lora", 1)
    sync = fleet(registry, tmp_path, url)
    v1 = sync.resolver.resolve("acme_support_lora@production")
    assert v1 is not None
    state.resolved_by_plugin("acme_support_lora@production", v1.lora_name, v1.path)
    state.resolved_by_plugin("acme", v1.lora_name, v1.path)
    register(registry, "acme_support_lora", lora_dirs["two"], vllm_base)
    attest(registry, "acme_support_lora", 2)
    acme2 = digest_name(registry, "acme_support_lora", 2)

    report = sync.sync_once()
    assert state.changes() == [
        ("/v1/load_lora_adapter", acme2),
        ("/v1/unload_lora_adapter", v1.lora_name),  # 404: vLLM holds it under the requested names
        ("/v1/unload_lora_adapter", "acme_support_lora@production"),
        ("/v1/unload_lora_adapter", "acme_support_lora"),  # 404: never requested by that name
        ("/v1/unload_lora_adapter", "acme"),
    ]
    assert report.servers[0].removed == ["acme_support_lora@production", "acme"]
    assert set(state.entries) == {acme2}  # the next request for either name is resolved again: version 2


def test_aliases_are_names_of_their_own_reloaded_never_in_place(
    endpoints: tuple[AdapterEndpoints, str], registry: AdapterStore, vllm_base: Path, lora_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:  # fmt: skip
    state, url = endpoints
    register(registry, "acme_support_lora", lora_dirs["one"], vllm_base)
    attest(registry, "acme_support_lora", 1)
    sync = fleet(registry, tmp_path, url, aliases=True)
    acme1 = digest_name(registry, "acme_support_lora", 1)
    sync.sync_once()
    assert state.changes() == [
        ("/v1/load_lora_adapter", n) for n in (acme1, "acme_support_lora@production", "acme")
    ]
    register(registry, "acme_support_lora", lora_dirs["two"], vllm_base)
    attest(registry, "acme_support_lora", 2)
    acme2 = digest_name(registry, "acme_support_lora", 2)
    report = sync.sync_once()
    assert state.changes() == [
        ("/v1/load_lora_adapter", acme2),
        ("/v1/unload_lora_adapter", "acme_support_lora@production"), ("/v1/load_lora_adapter", "acme_support_lora@production"),
        ("/v1/unload_lora_adapter", "acme"), ("/v1/load_lora_adapter", "acme"),
        ("/v1/unload_lora_adapter", acme1),
    ]  # fmt: skip
    assert {r["name"]: (r["version"], r["current"]) for r in report.servers[0].loaded} == {
        acme2: ("acme_support_lora/2", "yes"), "acme_support_lora@production": ("acme_support_lora/2", "yes"),
        "acme": ("acme_support_lora/2", "yes"),
    }  # fmt: skip


def test_a_server_on_another_base_or_down_is_reported_and_the_cli_exits_1(
    endpoints: tuple[AdapterEndpoints, str], registry: AdapterStore, vllm_base: Path, lora_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:  # fmt: skip
    from serving.conftest import build_base

    state, url = endpoints
    register(registry, "acme_support_lora", lora_dirs["one"], vllm_base)
    attest(registry, "acme_support_lora", 1)
    state.base = str(build_base(tmp_path / "other-base", seed=7))
    report = fleet(registry, tmp_path, url).sync_once()
    assert state.changes() == [] and "vLLM serves" in report.servers[0].refused["acme_support_lora/1"]
    state.base = str(vllm_base)
    state.runtime_updating = False
    report = fleet(registry, tmp_path, url).sync_once()
    assert report.servers[0].errors == [
        f"loading acme_support_lora/1: {url}/v1/load_lora_adapter: 404: Not Found (start vLLM with "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora)"
    ]
    state.runtime_updating = True
    state.changes()

    down = "http://127.0.0.1:9"  # nothing listens there
    result = CliRunner().invoke(app, ["--tracking-uri", registry.tracking_uri, "vllm-sync", "--url", url, "--url",
                                      down, "--once", "--json", "--cache", str(tmp_path / "cache")])  # fmt: skip
    assert result.exit_code == 1, result.stderr
    report_json = json.loads(result.stdout)
    ok, failed = report_json["servers"]
    assert [r["version"] for r in ok["loaded"]] == ["acme_support_lora/1"] and ok["errors"] == []
    assert failed["url"] == down and "no answer (ConnectError" in failed["errors"][0]
