"""Capacity: at most K adapters resident, the least recently used idle one evicted for a cold start, pins kept,
cached files checked at every load (tiny real Llama and peft adapters, no registry)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from adapter_registry.checksums import sha256_folder
from adapter_registry.serving.pool import AdapterPool, PoolError
from adapter_registry.serving.residency import CapacityError, Residency, check_capacity

PROMPT = "a b c 1 2 3"


def offer(residency: Residency, name: str, folder: Path) -> bool:
    return residency.offer(name, folder, sha256_folder(folder), {"version": "1", "ref": f"{name}/1"})


def answer(pool: AdapterPool, name: str) -> str:
    return pool.generate([PROMPT], [name], max_new_tokens=4)[0].text


def test_at_most_k_resident_the_least_recently_used_idle_one_evicted_pins_kept(tiny_base, adapters):
    pool = AdapterPool.from_pretrained(tiny_base)
    residency = Residency(pool, max_resident=2, pinned=["alpha"])
    loaded = {name: offer(residency, name, folder) for name, folder in adapters.items()}
    assert loaded == {"alpha": True, "beta": True, "qv": False, "rs": False}  # pinned, a free slot, listed
    assert len(residency) == 4 and sorted(residency.resident()) == ["alpha", "beta"]

    everyone = AdapterPool.from_pretrained(tiny_base)  # the reference: every adapter loaded at once
    for name, folder in adapters.items():
        everyone.add(name, folder)
    assert residency.try_acquire("qv") is False  # not resident: the caller takes the slow path
    residency.acquire("qv")  # a cold start: beta (least recently used, not pinned) makes room
    assert sorted(residency.resident()) == ["alpha", "qv"] and [a.name for a in pool.adapters()] == [
        "alpha",
        "qv",
    ]
    assert answer(pool, "qv") == answer(everyone, "qv")
    residency.release("qv")
    residency.acquire("rs")  # qv goes now; alpha stays pinned
    assert sorted(residency.resident()) == ["alpha", "rs"] and answer(pool, "rs") == answer(everyone, "rs")

    # a resident adapter with a request in flight is not evicted: no slot can be freed in time
    with pytest.raises(CapacityError, match="all 2 resident adapters are pinned or answering requests"):
        residency.acquire("beta", deadline=time.monotonic() + 0.2)
    residency.release("rs")
    residency.acquire("beta")
    assert sorted(residency.resident()) == ["alpha", "beta"] and answer(pool, "beta") == answer(
        everyone, "beta"
    )
    residency.release("beta")


def test_more_pins_than_slots_is_an_error_at_start_up(tiny_base):
    with pytest.raises(
        ValueError, match=r"--max-resident 1 is smaller than the 2 pinned adapters \(a, b\): raise"
    ):
        check_capacity(1, ["a", "b", "a"])
    with pytest.raises(ValueError, match="must be at least 1"):
        check_capacity(0, [])
    check_capacity(2, ["a", "b"])


def test_a_cached_file_changed_after_its_pull_is_not_loaded(tiny_base, adapters, tmp_path):
    pool = AdapterPool.from_pretrained(tiny_base)
    residency = Residency(pool, max_resident=1)
    folder = Path(shutil.copytree(adapters["beta"], tmp_path / "beta"))
    offer(residency, "alpha", adapters["alpha"])
    offer(residency, "beta", folder)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    with pytest.raises(PoolError, match=r"cached files of beta/1 .* changed since they were pulled"):
        residency.acquire("beta")
    assert residency.failures["beta"][0] == 1 and residency.resident() == ["alpha"]  # alpha was not evicted
