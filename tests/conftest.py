"""Shared fixtures (the helpers they use live in helpers.py, importable from any test module).

The repository root goes on ``sys.path`` here, so tests import the folders beside ``src/`` that are no package
of the product: ``datagen`` (the DVC stages of the demo data) and ``benchmarks``. The session starts from the
same offline defaults as the CLI and ``kedro run``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapter_registry.environment import offline_defaults
from helpers import (
    _drop_overlap,
    build_tiny_bert,
    build_tiny_llama,
    intent_rows,
    support_rows,
    write_jsonl,
)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

offline_defaults()  # the test session is an entry point like the CLI and `kedro run`
os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on a 2-core machine: two OpenMP threads each would spin at every barrier while
    # the other worker holds a core (training/threads.py), so each worker, and what it starts, trains on one.
    os.environ["OMP_NUM_THREADS"] = os.environ["ADAPTER_REGISTRY_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("bases") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("bases") / "tiny-bert")


@pytest.fixture
def sft_data(tmp_path: Path) -> Path:
    folder = tmp_path / "sft_data"
    for split, n, seed in (("train", 48, 1), ("validation", 12, 2), ("test", 12, 3)):
        write_jsonl(folder / f"{split}.jsonl", support_rows(n, seed))
    _drop_overlap(folder, "prompt")
    return folder


@pytest.fixture
def intent_data(tmp_path: Path) -> Path:
    folder = tmp_path / "intent_data"
    for split, n, seed in (("train", 48, 1), ("validation", 12, 2), ("test", 12, 3)):
        write_jsonl(folder / f"{split}.jsonl", intent_rows(n, seed))
    _drop_overlap(folder, "text")
    return folder


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain ``mlflow server`` (sqlite backend, no auth) on 127.0.0.1, started once for every test that needs
    one: the registry's server round trip and serve's webhooks (it may call 127.0.0.1, see WEBHOOK_ENV)."""
    from registry.conftest import WEBHOOK_ENV, start_server

    yield from start_server(tmp_path_factory.mktemp("server"), env=WEBHOOK_ENV)
