"""Fleet-wide hot swap for real: three replicas (uvicorn on 127.0.0.1, two on the tiny base, one on another base)
announce themselves in a sqlite registry; ``promote --wait`` reports the replica that cannot load the new version
(it keeps serving the old one and its heartbeat says why) and skips the one on another base; once the replica can
load it, the fleet serves one digest."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.cli import app
from adapter_registry.registry import promotion
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.fleet import read_fleet, wait_for_fleet
from adapter_registry.registry.policy import Actor, PromotionPolicy
from adapter_registry.registry.store import AdapterStore
from adapter_registry.serving.app import ServeOptions
from adapter_registry.serving.sync import content_key

from .conftest import build_base, serve_in_thread
from .test_app import free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]
OPEN = {"policy": PromotionPolicy(enforce="never"), "actor": Actor("alice", False)}
runner = CliRunner()


def put(store: AdapterStore, folder: Path, fingerprint: str, *stages: str) -> Any:
    tags = {Tag.BASE_FINGERPRINT: fingerprint, Tag.TASK: "causal_lm_sft", Tag.METHOD: "lora"}
    version = store.register_adapter("alpha", folder, tags=tags, metrics={"beats_base": 1.0})
    for stage in stages:
        promotion.promote(store, version.ref, stage, **OPEN)
    return version


@contextlib.contextmanager
def replica(store: AdapterStore, base: Path, tmp_path: Path, cache: str) -> Iterator[str]:
    (tmp_path / "tenants.yml").write_text("tenants: {}\n")
    port = free_port()
    options = ServeOptions(
        tracking_uri=store.tracking_uri, port=port, poll_seconds=0.3, heartbeat_seconds=0.5, request_log=None,
        tenants_file=tmp_path / "tenants.yml", adapter_cache=tmp_path / cache,
    )  # fmt: skip
    with serve_in_thread(base, options, "a replica"):
        yield f"http://127.0.0.1:{port}"


def served(url: str) -> int:
    return int(
        next(a["version"] for a in httpx.get(f"{url}/v1/adapters").json()["adapters"] if a["name"] == "alpha")
    )


def test_promote_waits_for_every_replica_and_names_the_one_that_cannot_load_it(
    registry: AdapterStore, tiny_base: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    fingerprint = describe_folder(tiny_base).fingerprint
    other_base = build_base(tmp_path / "other-base", seed=5)
    first = put(registry, adapters["alpha"], fingerprint, "staging", "production")
    with (
        replica(registry, tiny_base, tmp_path, "cache-a") as a,
        replica(registry, tiny_base, tmp_path, "cache-b") as b,
        replica(registry, other_base, tmp_path, "cache-c") as c,
    ):
        assert wait_for_fleet(registry, first, timeout=30).ok
        listed = json.loads(
            runner.invoke(app, ["--tracking-uri", registry.tracking_uri, "fleet", "--json"]).stdout
        )
        assert sorted((r["url"], r["condition"]) for r in listed) == sorted((u, "live") for u in (a, b, c))
        other = next(r for r in listed if r["url"] == c)
        assert other["serves"] == {} and other["problems"]["alpha"]["kind"] == "foreign"
        table = runner.invoke(app, ["--tracking-uri", registry.tracking_uri, "fleet", "--adapter", "alpha"])
        assert "other base" in table.stdout and "alpha/1" in table.stdout

        second = put(registry, adapters["beta"], fingerprint, "staging")
        blocked = tmp_path / "cache-b" / content_key(second.checksums)
        blocked.write_text("a file where replica b's copy of version 2 would go")  # b cannot store it
        result = runner.invoke(app, ["--tracking-uri", registry.tracking_uri, "promote", "alpha/2", "--to",
                                     "production", "--wait", "--timeout", "30"])  # fmt: skip
        assert result.exit_code == 1
        assert f"alpha/2 is not served by every replica: 127.0.0.1:{b.rsplit(':', 1)[1]} ({b}) cannot serve it: " \
               "failed: " in result.stderr  # fmt: skip
        assert f"not waited for: 127.0.0.1:{c.rsplit(':', 1)[1]} (serves base" in result.stdout
        assert (served(a), served(b)) == (2, 1)  # b keeps the old version, and says why
        b_beat = next(r for r in read_fleet(registry) if r.url == b)
        assert b_beat.serves["alpha"].version == 1 and b_beat.problems["alpha"].version == 2

        blocked.unlink()  # b can load it now: its next poll does
        state = wait_for_fleet(registry, registry.get_version("alpha", 2), timeout=30)
        assert state.ok and sorted(r.url for r in state.done) == sorted([a, b])
        assert [r.url for r, _ in state.skipped] == [c] and served(b) == 2
    ended = read_fleet(registry, include_ended=True)
    assert {r.condition() for r in ended if r.url in (a, b, c)} == {"stopped"}
