"""Fixtures of the routing tests: two generation experts with distinct tasks, trained on the tiny Llama and
registered (serving contract, data splits in lineage) in a sqlite store once per session."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.data.versions import dataset_version
from adapter_registry.recipes import parse_recipe
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.store import AdapterStore
from adapter_registry.training.adapter import train_adapter
from adapter_registry.training.models import save_adapter
from helpers import _drop_overlap, sft_recipe, splits, support_rows, write_jsonl

ACME, WEATHER = "acme_lora", "weather_lora"
CITIES = ["paris", "rome", "oslo", "lima", "cairo", "tokyo", "quito", "dakar"]
DAYS = ["monday", "tuesday", "friday", "sunday"]


def weather_rows(n: int, seed: int) -> list[dict[str, str]]:
    """A second task, its requests worded unlike the support ones: ``forecast | <sky>``."""
    rng = random.Random(seed)
    templates = ["what is the weather in {c} on {d}", "will it rain in {c} {d}", "forecast for {c} this {d}"]
    return [
        {"prompt": rng.choice(templates).format(c=rng.choice(CITIES), d=rng.choice(DAYS)),
         "completion": f"forecast | {rng.choice(['sunny', 'rainy'])}"}
        for _ in range(n)
    ]  # fmt: skip


def expert_tags(base: Path, data: Path) -> dict[str, str]:
    resolved = describe_folder(base)
    tags = {
        Tag.BASE_ID: resolved.identity, Tag.BASE_FINGERPRINT: resolved.fingerprint, Tag.TASK: "causal_lm_sft",
        Tag.METHOD: "lora",
    }  # fmt: skip
    for split in ("train", "test"):
        path = data / f"{split}.jsonl"
        tags[Tag.data_path(split)] = str(path)
        tags[Tag.data_md5(split)] = dataset_version(path).md5
    return tags


def register_expert(
    store: AdapterStore,
    base: Path,
    data: Path,
    folder: Path,
    name: str,
    seed: int,
    method: dict | None = None,
) -> None:
    """Train 4 steps on ``data`` and register the adapter with its serving contract and data splits."""
    raw = sft_recipe(base, data, name=name)
    raw["training"] = {**raw["training"], "seed": seed, "learning_rate": 2e-2, "max_steps": 4}
    if method:
        raw["method"] = method
    trained = train_adapter(parse_recipe(raw), describe_folder(base), *splits(raw, ("train", "validation")))
    save_adapter(trained.model, folder, trained.contract)
    store.register_adapter(name, folder, expert_tags(base, data), {"exact_match": 0.5})


@pytest.fixture(scope="session")
def experts(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> dict[str, Any]:
    """Two registered experts (v1 each) on the tiny Llama, with distinct tasks and their splits in lineage."""
    root = tmp_path_factory.mktemp("router")
    db = root / "mlflow.db"
    store = AdapterStore(f"sqlite:///{db}")
    for name, rows, seed in ((ACME, support_rows, 1), (WEATHER, weather_rows, 2)):
        data = root / f"{name}-data"
        for split, n, s in (("train", 36, seed), ("validation", 9, seed + 10), ("test", 12, seed + 20)):
            write_jsonl(data / f"{split}.jsonl", rows(n, s))
        _drop_overlap(data, "prompt")
        register_expert(store, tiny_llama, data, root / name, name, seed)
    return {"root": root, "db": db, "store": store, "data": {n: root / f"{n}-data" for n in (ACME, WEATHER)}}
