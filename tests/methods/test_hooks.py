"""The training-loop contract of the methods that train differently: LoRA-FA's optimizer, AdaLoRA's step hook,
and QLoRA's quantised base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft.optimizers.lorafa import LoraFAOptimizer

from adapter_registry.methods import optimizer_for, step_callback

from .tiny import CAUSAL, CLASSIFY, parse_method

QLORA_MERGE_ATOL = (
    0.5  # merging into 4-bit weights re-rounds them: the recipe's default merge.tolerance for 4-bit
)


def lora_weights(model: torch.nn.Module, kind: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if f"lora_{kind}" in n}


@pytest.mark.parametrize("task", [CAUSAL, CLASSIFY])
def test_lora_fa_trains_b_only_and_the_head(task: str, make_run: Any) -> None:
    method = parse_method({"type": "lora_fa", "r": 4}, task)
    run = make_run(task, method)
    model = run.adapt(method)
    a, b = lora_weights(model, "A"), lora_weights(model, "B")
    head = run.head.weight.detach().clone()
    run.train(method, model)
    assert isinstance(optimizer_for(method, model, 1e-3, 0.0), LoraFAOptimizer)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_A" in n)
    assert all(torch.equal(a[n], w) for n, w in lora_weights(model, "A").items())
    assert any(not torch.equal(b[n], w) for n, w in lora_weights(model, "B").items())
    if task == CLASSIFY:
        assert not torch.equal(head, run.head.weight)


def test_adalora_reallocates_ranks_down_to_the_budget(make_run: Any) -> None:
    method = parse_method(
        {"type": "adalora", "init_r": 6, "target_r": 2, "warmup_share": 0.2, "final_share": 0.2}
    )
    run = make_run(CAUSAL, method)
    model = run.adapt(method, steps=10)
    assert model.peft_config["default"].rank_pattern is None
    run.train(method, model, steps=10)
    pattern = model.peft_config["default"].rank_pattern
    assert pattern, "update_and_allocate never finalised the ranks"
    kept = sum(sum(mask) for mask in pattern.values())
    assert kept <= 2 * len(pattern) < 6 * len(pattern)  # target_r per layer on average, below init_r


def test_plain_methods_train_with_the_default_optimizer_and_no_hook(make_run: Any) -> None:
    method = parse_method({"type": "ia3"})
    model = make_run(CAUSAL, method).adapt(method)
    assert optimizer_for(method, model, 1e-3, 0.0) is None
    assert step_callback(method, model) is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "quant", [{"bits": 4, "quant_type": "nf4", "double_quant": True}, {"bits": 4, "quant_type": "fp4"}, {"bits": 8}],
    ids=["nf4-double", "fp4", "int8"],
)  # fmt: skip
def test_qlora_trains_reloads_and_merges_on_a_quantised_base(
    quant: dict[str, Any], make_run: Any, tmp_path: Path
) -> None:
    method = parse_method({"type": "qlora", "r": 4, "target_modules": ["q_proj", "v_proj"], **quant})
    run = make_run(CAUSAL, method)
    base_logits = run.logits(run.base())
    model = run.adapt(method)
    losses = run.train(method, model, lr=5e-2)
    trained = run.logits(model)
    assert losses[-1] < losses[0]
    model.save_pretrained(tmp_path / "adapter")
    reload_diff = float((run.logits(run.reload(tmp_path / "adapter")) - trained).abs().max())
    assert reload_diff <= 1e-5
    merged = run.logits(model.merge_and_unload())
    merge_diff = float((merged - trained).abs().max())
    assert merge_diff <= QLORA_MERGE_ATOL
    print(f"PARITY qlora {quant}: reload {reload_diff:.1e}, merge {merge_diff:.1e}, "
          f"adapter-vs-base {float((trained - base_logits).abs().max()):.1e}")  # fmt: skip
