"""Helpers of the vLLM tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from adapter_registry.bases.fingerprint import fingerprint_folder
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.store import AdapterStore

CONTRACT = {
    "contract_version": 1, "task": "causal_lm_sft", "format": "completion",
    "prompt_template": "### Request:\n{prompt}\n### Answer:\n", "answer_separator": " | ",
    "decoding": "constrained", "answers": ["refund", "damaged_item", "cancel_order"], "max_new_tokens": 8,
}  # fmt: skip


def with_contract(folder: Path, tmp_path: Path, **overrides: Any) -> Path:
    """A copy of an adapter folder with a serving contract (``serving.json``) and a model card."""
    out = Path(shutil.copytree(folder, tmp_path / f"{folder.name}-contract"))
    (out / "serving.json").write_text(json.dumps({**CONTRACT, **overrides}))
    (out / "README.md").write_text("# model card\n")
    return out


def register(store: AdapterStore, name: str, folder: Path, base: Path, **tags: str) -> int:
    """Register ``folder`` as the next version of ``name``, with the tags the pipeline writes about its base."""
    version = store.register_adapter(
        name,
        folder,
        tags={
            Tag.BASE_ID: str(base),
            Tag.BASE_REVISION: "",
            Tag.BASE_FINGERPRINT: fingerprint_folder(base),
            Tag.BASE_ARCHITECTURE: "LlamaForCausalLM",
            Tag.TASK: "causal_lm_sft",
            Tag.METHOD: "lora",
            **tags,
        },
        metrics={},
    )
    return version.version


def attest(store: AdapterStore, name: str, version: int, stage: str = "production") -> None:
    """An audited promotion (forced with a reason: the tiny adapters record no metrics for the gates)."""
    from adapter_registry.registry import promotion
    from adapter_registry.registry.policy import Actor, PromotionPolicy

    promotion.promote(
        store, f"{name}/{version}", stage, force=True, reason="test fixture: tiny adapters record no metrics",
        policy=PromotionPolicy(enforce="never"), actor=Actor("tester", False),
    )  # fmt: skip
