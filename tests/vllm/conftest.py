"""Fixtures of the vLLM tests: a tiny random Llama base, real peft adapters on it, a real sqlite registry.

No vLLM and no GPU: these tests check the export format (loaded back by plain peft, checked against vLLM's
documented rules), the resolver's registry side as a library function, the request bodies, and vllm-sync's HTTP
client against a stand-in that speaks only vLLM's documented adapter endpoints. Serving on vLLM itself is
``benchmarks/vllm_live_check.py``'s job, on a GPU machine.

This folder has no ``__init__.py`` on purpose: a package named ``vllm`` on the test path would shadow vLLM. (It
still counts as a namespace package where vLLM is not installed, so "is vLLM installed" asks for a module origin.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adapter_registry.registry.store import AdapterStore
from serving.conftest import build_adapter, build_base


@pytest.fixture(scope="session")
def vllm_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_base(tmp_path_factory.mktemp("vllm-base") / "tiny-llama")


@pytest.fixture(scope="session")
def lora_dirs(vllm_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real peft saves: two LoRAs (all-linear r=4, two seeds), a rank-32 LoRA and a DoRA adapter."""
    root = tmp_path_factory.mktemp("vllm-adapters")
    return {
        "one": build_adapter(vllm_base, root / "one", seed=1),
        "two": build_adapter(vllm_base, root / "two", seed=2),
        "wide": build_adapter(vllm_base, root / "wide", seed=3, r=32),
        "dora": build_adapter(vllm_base, root / "dora", seed=4, use_dora=True),
    }


@pytest.fixture(scope="session")
def vllm_empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("vllm-db") / "mlflow.db"
    AdapterStore(f"sqlite:///{db}").list_models()
    return db


@pytest.fixture
def registry(tmp_path: Path, vllm_empty_db: Path, monkeypatch: pytest.MonkeyPatch) -> AdapterStore:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    shutil.copyfile(vllm_empty_db, tmp_path / "mlflow.db")
    return AdapterStore(f"sqlite:///{tmp_path / 'mlflow.db'}")
