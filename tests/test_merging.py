"""Merge contracts: merged ≈ adapter, merged ≠ base; an adapter that changes nothing is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from adapter_registry.data.formats import load_split
from adapter_registry.merging import FLOAT32_TOLERANCE, MergeError, merge_adapter
from adapter_registry.training.features import sft_features
from adapter_registry.training.models import load_adapter, load_base_model, load_tokenizer, save_adapter


def _adapter(tiny_llama: Path, folder: Path, b_std: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = get_peft_model(
        load_base_model(tiny_llama, "causal_lm_sft"),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, b_std)
    save_adapter(model, folder)
    return model.eval()


def _features(tiny_llama: Path, sft_data: Path) -> list[dict]:
    rows = load_split(
        sft_data / "test.jsonl", "completion", prompt_template="### Request:\n{prompt}\n### Answer:\n"
    )
    return sft_features(rows[:6], load_tokenizer(tiny_llama), 64)


def test_merged_matches_adapter_and_differs_from_base(
    tiny_llama: Path, sft_data: Path, tmp_path: Path
) -> None:
    model = _adapter(tiny_llama, tmp_path, b_std=0.05)
    fresh = load_adapter(tiny_llama, tmp_path, "causal_lm_sft")
    merged, report = merge_adapter(model, fresh, _features(tiny_llama, sft_data), 0)
    assert report.passed and report.max_abs_diff < FLOAT32_TOLERANCE < report.diff_vs_base
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert any("lora_B" in name for name, _ in model.named_parameters())  # the input is left untouched


def test_adapter_that_changes_nothing_is_refused(tiny_llama: Path, sft_data: Path, tmp_path: Path) -> None:
    model = _adapter(tiny_llama, tmp_path, b_std=0.0)  # B = 0: LoRA's initial, no-op state
    fresh = load_adapter(tiny_llama, tmp_path, "causal_lm_sft")
    with pytest.raises(MergeError, match="the merged model equals the base: this adapter changes nothing"):
        merge_adapter(model, fresh, _features(tiny_llama, sft_data), 0)


def test_parity_failure_is_refused(tiny_llama: Path, sft_data: Path, tmp_path: Path) -> None:
    model = _adapter(tiny_llama, tmp_path / "a", b_std=0.05)
    other = _adapter(tiny_llama, tmp_path / "b", b_std=0.5)  # a different adapter posing as the same one
    with pytest.raises(
        MergeError, match=r"merge parity failed: max \|logits\(merged\) - logits\(adapter\)\| = "
    ):
        merge_adapter(
            model,
            load_adapter(tiny_llama, tmp_path / "b", "causal_lm_sft"),
            _features(tiny_llama, sft_data),
            0,
        )
    del other


def test_no_rows_no_merge(tiny_llama: Path, tmp_path: Path) -> None:
    model = _adapter(tiny_llama, tmp_path, b_std=0.05)
    with pytest.raises(MergeError, match="no held-out rows"):
        merge_adapter(model, model, [], 0)
