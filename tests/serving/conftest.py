"""Fixtures of the serving tests: a tiny random Llama base with a tiny word-level tokenizer, LoRA adapters.

No mocks: adapters are real peft saves with non-zero B matrices, so each one changes the logits.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from adapter_registry.serving.app import ServeOptions, build_server

TINY_LLAMA = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
WORDS = [*"abcdefghijklmnopqrstuvwxyz", *(str(i) for i in range(98))]  # 4 + 26 + 98 = 128 tokens


def build_base(folder: Path, seed: int = 0) -> Path:
    """A tiny random Llama and a word-level tokenizer over the same 128-token vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).save_pretrained(folder)
    vocab = {token: i for i, token in enumerate([*SPECIALS, *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(folder)
    return folder


def build_adapter(
    base: Path,
    folder: Path,
    seed: int,
    r: int = 4,
    target_modules: str | list[str] = "all-linear",
    **config: object,
) -> Path:
    """A LoRA adapter with random A and B (B non-zero: the adapter changes the outputs), saved by peft."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(
        model,
        LoraConfig(r=r, lora_alpha=2 * r, target_modules=target_modules, **config),  # type: ignore[arg-type]
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_base(tmp_path_factory.mktemp("serving-base") / "tiny-llama")


@pytest.fixture(scope="session")
def adapters(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four adapters: all-linear r=4 (two seeds), q/v only r=2, all-linear r=8 with rsLoRA."""
    root = tmp_path_factory.mktemp("serving-adapters")
    return {
        "alpha": build_adapter(tiny_base, root / "alpha", seed=1),
        "beta": build_adapter(tiny_base, root / "beta", seed=2),
        "qv": build_adapter(tiny_base, root / "qv", seed=3, r=2, target_modules=["q_proj", "v_proj"]),
        "rs": build_adapter(tiny_base, root / "rs", seed=4, r=8, use_rslora=True),
    }


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty sqlite MLflow database, migrated once (migrations take seconds)."""
    from adapter_registry.registry.store import AdapterStore

    db = tmp_path_factory.mktemp("serving-db") / "mlflow.db"
    AdapterStore(f"sqlite:///{db}").list_models()
    return db


@pytest.fixture
def registry(tmp_path: Path, empty_db: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A sqlite MLflow registry of its own in tmp_path (a copy of the migrated empty one)."""
    import shutil

    from adapter_registry.registry.store import AdapterStore

    monkeypatch.chdir(tmp_path)  # run artifacts land in tmp_path/mlruns
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    shutil.copyfile(empty_db, tmp_path / "mlflow.db")
    return AdapterStore(f"sqlite:///{tmp_path / 'mlflow.db'}")


def attest(store, name: str, version: int, stage: str = "production") -> None:  # type: ignore[no-untyped-def]
    """Put ``name/version`` into ``stage`` the way an operator does: an audited promotion (forced with a reason:
    these tiny adapters record no metrics for the gates). ``serve`` only serves stage holders placed like this."""
    from adapter_registry.registry import promotion
    from adapter_registry.registry.policy import Actor, PromotionPolicy

    promotion.promote(
        store, f"{name}/{version}", stage, force=True, reason="test fixture: tiny adapters record no metrics",
        policy=PromotionPolicy(enforce="never"), actor=Actor("tester", False),
    )  # fmt: skip


@contextlib.contextmanager
def serve_in_thread(base: Path, options: ServeOptions, what: str = "the server") -> Iterator[uvicorn.Server]:
    """``serve`` on ``options.port`` in a thread of this process, started (else the test fails naming ``what``),
    and stopped afterwards."""
    server = build_server(str(base), options)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, f"{what} did not start"
        time.sleep(0.05)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=30)
