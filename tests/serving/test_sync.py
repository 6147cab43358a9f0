"""RegistrySync against a real sqlite registry: stage holders in, refusals and failed pulls logged, old kept."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.policy import Actor, PromotionPolicy
from adapter_registry.registry.promotion import retire
from adapter_registry.registry.store import AdapterStore
from adapter_registry.serving.pool import AdapterPool
from adapter_registry.serving.sync import RegistrySource, RegistrySync

from .conftest import attest

OPEN, TESTER = PromotionPolicy(enforce="never"), Actor("tester", False)


@pytest.fixture
def registry(tmp_path: Path, empty_db: Path, monkeypatch: pytest.MonkeyPatch) -> AdapterStore:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    shutil.copyfile(empty_db, tmp_path / "mlflow.db")
    return AdapterStore(f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture
def sync(registry: AdapterStore, tiny_base: Path) -> RegistrySync:
    fingerprint = describe_folder(tiny_base).fingerprint
    return RegistrySync(
        AdapterPool.from_pretrained(tiny_base, fingerprint),
        RegistrySource(registry),
        fingerprint,
        settle_seconds=0,
    )


def put(
    store: AdapterStore, name: str, folder: Path, fingerprint: str, stage: str = "production", **tags: str
) -> int:
    version = store.register_adapter(
        name, folder, tags={Tag.BASE_FINGERPRINT: fingerprint, Tag.TASK: "causal_lm_sft", **tags}, metrics={}
    )
    attest(store, name, version.version, stage)
    return version.version


def served(sync: RegistrySync) -> dict[str, str]:
    return {a.name: a.metadata["version"] for a in sync.pool.adapters()}


def test_only_stage_holders_for_this_base_and_task_are_served(sync, registry, adapters, caplog):
    fp = sync.base_fingerprint
    put(registry, "alpha", adapters["alpha"], fp)
    put(registry, "staged", adapters["beta"], fp, stage="staging")
    put(registry, "classifier", adapters["qv"], fp, **{Tag.TASK: "sequence_classification"})
    put(registry, "foreign", adapters["rs"], "sha256:" + "1" * 64)
    with caplog.at_level(logging.WARNING, logger="adapter_registry.serving"):
        sync.sync()
        sync.sync()  # a second poll changes nothing and logs nothing new
    assert served(sync) == {"alpha": "1"}
    assert sync.refused == {
        "classifier": (
            1,
            "task 'sequence_classification' is not served (the server generates text: causal_lm_sft)",
        ),
        "foreign": (1, f"trained on base sha256:{'1' * 64}, served base is {fp}"),
    }
    assert sorted(r.getMessage().split(":")[0] for r in caplog.records) == [
        "refused classifier/1",
        "refused foreign/1",
    ]


def test_a_corrupted_new_version_leaves_the_old_one_serving(sync, registry, adapters, tmp_path, caplog):
    fp = sync.base_fingerprint
    put(registry, "alpha", adapters["alpha"], fp)
    sync.sync()
    v2 = registry.register_adapter("alpha", adapters["beta"], tags={Tag.BASE_FINGERPRINT: fp}, metrics={})
    attest(registry, "alpha", v2.version)  # promotion checks the files: they are tampered with after it
    weights = next(tmp_path.rglob(f"{v2.run_id}/artifacts/adapter/adapter_model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")  # the registered sha256 no longer matches
    with caplog.at_level(logging.ERROR, logger="adapter_registry.serving"):
        sync.sync()
    assert served(sync) == {"alpha": "1"}
    assert sync.failed["alpha"][0] == 2 and "sha256" in sync.failed["alpha"][1]
    assert "could not load alpha/2, still serving alpha/1" in caplog.text

    put(registry, "alpha", adapters["rs"], fp)  # a good version 3 takes the stage
    sync.sync()
    assert served(sync) == {"alpha": "3"} and "alpha" not in sync.failed


def test_adapters_leaving_the_stage_are_unloaded(sync, registry, adapters):
    fp = sync.base_fingerprint
    put(registry, "alpha", adapters["alpha"], fp)
    put(registry, "beta", adapters["beta"], fp)
    sync.sync()
    assert served(sync) == {"alpha": "1", "beta": "1"}
    retire(registry, "beta", "production", reason="tenant left", policy=OPEN, actor=TESTER)
    sync.sync()
    assert served(sync) == {"alpha": "1"}


def test_a_refused_stage_holder_leaves_the_last_good_version_serving(
    sync, registry, adapters, tiny_base, tmp_path
):
    from .conftest import build_adapter

    fp = sync.base_fingerprint
    put(registry, "alpha", adapters["alpha"], fp)
    sync.sync()
    put(registry, "alpha", adapters["qv"], "sha256:" + "2" * 64)  # v2: another base
    sync.sync()
    assert served(sync) == {"alpha": "1"} and sync.stale() == {"alpha": 2}
    dora = build_adapter(tiny_base, tmp_path / "dora", seed=9, use_dora=True)
    put(registry, "alpha", dora, fp)  # v3: right base, but DoRA, which the pool does not serve
    sync.sync()
    sync.sync()  # not pulled again: the refusal of v3's files is remembered
    assert served(sync) == {"alpha": "1"} and sync.stale() == {"alpha": 3}
    assert "use_dora=True is not served" in sync.refused["alpha"][1]


def test_an_alias_moved_outside_adapter_registry_is_not_served(sync, registry, adapters, caplog):
    """MLflow's UI or REST (here its client) moves production to a version no audited promotion placed there:
    the last attested version keeps serving, and the refusal is listed and logged once."""
    from mlflow import MlflowClient

    fp = sync.base_fingerprint
    put(registry, "alpha", adapters["alpha"], fp)
    sync.sync()
    v2 = registry.register_adapter("alpha", adapters["beta"], tags={Tag.BASE_FINGERPRINT: fp}, metrics={})
    MlflowClient(registry.tracking_uri).set_registered_model_alias("alpha", "production", str(v2.version))
    with caplog.at_level(logging.INFO, logger="adapter_registry.serving"):
        sync.sync()  # first seen: not refused yet, the promotion writing its audit event may be under way
        assert sync.refused == {} and sync.recheck_in() is not None
        sync.sync()
        sync.sync()
    assert served(sync) == {"alpha": "1"} and sync.stale() == {"alpha": 2}
    version, reason = sync.refused["alpha"]
    assert version == 2 and "which no audited, gate-checked promotion placed" in reason
    assert reason.endswith("serving the last attested version 1")
    assert len([r for r in caplog.records if "refused alpha/2" in r.getMessage()]) == 1


def test_stage_holders_are_cached_by_content_and_a_cold_load_does_not_call_the_registry(
    registry, adapters, tiny_base, tmp_path
):
    from adapter_registry.serving.residency import Residency
    from adapter_registry.serving.sync import AdapterCache, content_key

    pool = AdapterPool.from_pretrained(tiny_base, describe_folder(tiny_base).fingerprint)
    cache = AdapterCache(tmp_path / "cache")
    sync = RegistrySync(
        pool, RegistrySource(registry), pool.fingerprint, residency=Residency(pool, 1), cache=cache
    )
    put(registry, "alpha", adapters["alpha"], pool.fingerprint)
    put(registry, "beta", adapters["beta"], pool.fingerprint)
    sync.sync()
    assert [s.name for s in sync.residency.servables()] == ["alpha", "beta"] and len(pool) == 1
    keys = {content_key(registry.get_version(n, 1).checksums) for n in ("alpha", "beta")}
    assert {p.name for p in (tmp_path / "cache").iterdir()} == keys
    shutil.rmtree(tmp_path / "mlruns")  # the registry's files are gone: a cold load reads the cache
    sync.residency.acquire("beta")
    assert [a.name for a in pool.adapters()] == ["beta"] and pool.info("beta").metadata["version"] == "1"
