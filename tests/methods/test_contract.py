"""Every method on tiny random bases: build from a parsed recipe, train, save → reload (same logits), merge.

Parity: a reloaded adapter gives the trained adapter's logits within 1e-5; a merged model gives them within
1e-4 (float32) and differs from the base. 4-bit bases are re-quantised by the merge, hence QLoRA's looser,
documented tolerance (``QLORA_MERGE_ATOL``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from adapter_registry.methods import method_builder

from .tiny import CAUSAL, CLASSIFY, parse_method

RELOAD_ATOL = 1e-5
MERGE_ATOL = 1e-4
QLORA_MERGE_ATOL = 0.5  # merging into NF4 weights re-rounds them (the recipe's merge.tolerance for 4-bit)

TINY = {
    "lora": {"type": "lora", "r": 4, "target_modules": "all-linear"},
    "lora_dora_rslora": {
        "type": "lora", "r": 4, "use_dora": True, "use_rslora": True, "target_modules": "all-linear",
        "rank_pattern": {"v_proj": 2, "value": 2}, "alpha_pattern": {"v_proj": 8, "value": 8},
    },
    "lora_fa": {"type": "lora_fa", "r": 4, "alpha": 8},
    "adalora": {"type": "adalora", "init_r": 6, "target_r": 2, "warmup_share": 0.2, "final_share": 0.2},
    "ia3": {"type": "ia3"},
    "loha": {"type": "loha", "r": 4},
    "lokr": {"type": "lokr", "r": 4},
    "vera": {"type": "vera", "r": 8, "d_initial": 0.5},
    "oft": {"type": "oft", "block_size": 8},
    "prefix_tuning": {"type": "prefix_tuning", "num_virtual_tokens": 4},
    "prompt_tuning": {"type": "prompt_tuning", "num_virtual_tokens": 4},
    "p_tuning": {"type": "p_tuning", "num_virtual_tokens": 4, "encoder_hidden_size": 16},
    "llama_adapter": {"type": "llama_adapter", "adapter_len": 4, "adapter_layers": 2},
}  # fmt: skip
CLASSIFY_CASES = ["lora", "lora_dora_rslora", "lora_fa", "adalora", "ia3", "loha", "lokr", "vera", "oft",
                  "prefix_tuning"]  # fmt: skip
CASES = [(CAUSAL, name) for name in TINY] + [(CLASSIFY, name) for name in CLASSIFY_CASES]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize(("task", "case"), CASES, ids=[f"{t.split('_')[0]}-{c}" for t, c in CASES])
def test_train_save_reload_merge(task: str, case: str, make_run: Any, tmp_path: Path) -> None:
    method = parse_method(TINY[case], task)
    run = make_run(task, method)
    base_logits = run.logits(run.base())
    model = run.adapt(method)
    before = run.logits(model)
    losses = run.train(method, model)
    trained = run.logits(model)
    assert losses[-1] < losses[0], f"{case}: training did not lower the loss {losses}"
    assert max_diff(trained, before) > 1e-3, f"{case}: training did not change the outputs"

    model.save_pretrained(tmp_path / "adapter")
    reloaded = run.reload(tmp_path / "adapter")
    reload_diff = max_diff(run.logits(reloaded), trained)
    assert reload_diff <= RELOAD_ATOL, f"{case}: reload differs by {reload_diff:.2e}"

    if method_builder(method.type).mergeable:
        merged = model.merge_and_unload()
        merge_diff = max_diff(run.logits(merged), trained)
        assert merge_diff <= MERGE_ATOL, f"{case}: merged differs from the adapter by {merge_diff:.2e}"
        assert max_diff(run.logits(merged), base_logits) > 1e-3, f"{case}: merged equals the base"
    print(f"PARITY {task} {case}: reload {reload_diff:.1e}", end="")
    print(f", merge {merge_diff:.1e}" if method_builder(method.type).mergeable else ", (not mergeable)")
