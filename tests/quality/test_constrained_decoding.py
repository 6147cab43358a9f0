"""Constrained decoding: every answer is one of the training answers, at the cost of greedy decoding."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter_registry.contract import ServingContract
from adapter_registry.decoding import AnswerConstraint, choice_trie
from adapter_registry.evaluation.evaluate import answer_key, evaluate_adapter, generate
from adapter_registry.pipelines.datasets import AdapterFolderDataset
from adapter_registry.recipes import RecipeError, parse_recipe
from adapter_registry.training.adapter import train_adapter
from helpers import build_tiny_llama, classifier_recipe, sft_recipe, splits

PROMPTS = ["### Request:\nmy card has not arrived\n### Answer:\n", "### Request:\nrate?\n### Answer:\n"] * 3
CHOICES = ["card arrival", "exchange rate", "card", "top up by bank transfer charge"]


def test_trie_holds_every_prefix_and_closes_each_choice_with_eos(tiny_llama) -> None:
    _, tokenizer = tiny_llama
    trie, eos = choice_trie(CHOICES, tokenizer)
    for choice in CHOICES:
        tokens = tokenizer(choice, add_special_tokens=False)["input_ids"] + [eos]
        for i, token in enumerate(tokens):
            assert token in trie[tuple(tokens[:i])]
    card = tuple(tokenizer("card", add_special_tokens=False)["input_ids"])
    assert eos in trie[card] and len(trie[card]) > 1  # "card" may end or go on to "card arrival"


def test_a_random_model_answers_only_with_choices(tiny_llama) -> None:
    model, tokenizer = tiny_llama
    free = generate(model, tokenizer, PROMPTS, 8, 64)
    constrained = generate(
        model, tokenizer, PROMPTS, 12, 64, batch_size=4, constraint=AnswerConstraint.build(CHOICES, tokenizer)
    )
    assert not set(free) <= set(CHOICES)  # an untrained model babbles ...
    assert set(constrained) <= set(CHOICES)  # ... unless it may only spell a choice


def test_sft_recipe_with_constrained_decoding_scores_labels_seen_in_training(
    tmp_path: Path, sft_data: Path
) -> None:
    from adapter_registry.bases.resolve import describe_folder

    base = build_tiny_llama(tmp_path / "base")
    raw = sft_recipe(base, sft_data)
    raw["evaluation"]["decoding"] = "constrained"
    recipe = parse_recipe(raw)
    train_x, val_x, test_x = splits(raw)
    trained = train_adapter(recipe, describe_folder(base), train_x, val_x)
    categories = {e.answer.split(" | ")[0].strip() for e in train_x}
    assert trained.labels == sorted(categories)
    report = evaluate_adapter(trained, test_x, recipe.evaluation, 64)
    answers = {answer_key(s[who], " | ") for s in report.samples for who in ("adapter", "base")}
    assert answers <= categories  # the base too: same prompts, same decoding
    assert "constrained" in report.baseline
    assert len(report.outputs) == len(test_x)  # every scored row's answer, for the served = evaluated check
    # the answer set travels with the registered adapter in its serving contract, so serving decodes the same way
    AdapterFolderDataset(str(tmp_path / "adapter")).save(trained)
    contract = ServingContract.read(tmp_path / "adapter")
    assert contract == trained.contract
    assert (contract.decoding, list(contract.answers), contract.answer_separator) == (
        "constrained", trained.labels, " | ",
    )  # fmt: skip


@pytest.mark.parametrize("make", ["classifier", "compose"])
def test_constrained_decoding_is_refused_where_there_is_no_training_answer_set(
    tmp_path: Path, sft_data: Path, intent_data: Path, make: str
) -> None:
    if make == "classifier":
        raw = classifier_recipe(tmp_path, intent_data)
        raw["evaluation"]["decoding"] = "constrained"
    else:
        raw = sft_recipe(tmp_path, sft_data)
        del raw["method"], raw["training"]
        raw["compose"] = {
            "max_length": 64,
            "combination_type": "linear",
            "parents": [{"version": "a/1", "weight": 0.5}, {"version": "b/1", "weight": 0.5}],
        }
        raw["evaluation"].update(decoding="constrained", must_beat_base=False)
    with pytest.raises(RecipeError, match="decoding: constrained"):
        parse_recipe(raw)
