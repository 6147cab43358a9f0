"""Label scoring: the packed single pass equals scoring every (prompt, label) pair on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.label_scoring import label_log_likelihoods, label_scoring_predictions

PROMPTS = ["### Request:\nmy card has not arrived\n### Answer:\n", "### Request:\nrate?\n### Answer:\n"]
LABELS = ["card arrival", "exchange rate", "card", "top up by bank transfer charge"]


def naive_scores(model, tokenizer, prompts, labels) -> np.ndarray:
    out = np.zeros((len(prompts), len(labels)))
    for i, prompt in enumerate(prompts):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for k, label in enumerate(labels):
            y = tokenizer(label, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([p + y])).logits[0]
            log_probs = torch.log_softmax(logits, -1)
            out[i, k] = sum(float(log_probs[len(p) - 1 + j, t]) for j, t in enumerate(y))
    return out


@pytest.mark.parametrize("batch_size", [1, 2])
def test_packed_scores_equal_one_pair_at_a_time(tiny_llama, batch_size) -> None:
    model, tokenizer = tiny_llama
    packed = label_log_likelihoods(model, tokenizer, PROMPTS, LABELS, batch_size=batch_size)
    np.testing.assert_allclose(packed, naive_scores(model, tokenizer, PROMPTS, LABELS), atol=1e-4)


def test_prediction_is_a_known_label(tiny_llama) -> None:
    model, tokenizer = tiny_llama
    predictions = label_scoring_predictions(model, tokenizer, PROMPTS, LABELS)
    assert len(predictions) == len(PROMPTS)
    assert set(predictions) <= set(LABELS)


def test_a_peft_wrapped_model_scores_like_its_base(tiny_llama) -> None:
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny_llama
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))  # B=0: no change
    try:
        np.testing.assert_allclose(
            label_log_likelihoods(peft_model, tokenizer, PROMPTS, LABELS),
            naive_scores(model, tokenizer, PROMPTS, LABELS),
            atol=1e-4,
        )
    finally:
        peft_model.unload()
