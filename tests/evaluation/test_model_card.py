"""The model card's loading snippet, run as a user would run it: transformers + peft alone, same outputs."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.decoding import AnswerConstraint
from adapter_registry.evaluation.evaluate import answer_key, evaluate_adapter, generate
from adapter_registry.evaluation.report import model_card, report_dict
from adapter_registry.recipes import parse_recipe
from adapter_registry.training.adapter import train_adapter
from adapter_registry.training.features import classification_features, collate
from adapter_registry.training.models import save_adapter
from helpers import classifier_recipe, neighbour_vote, sft_recipe, splits

pytestmark = pytest.mark.slow


def run_card_snippet(card: str, **placeholders: str) -> tuple[dict, str]:
    """Execute the card's Python block with its placeholders filled in; (its variables, what it printed)."""
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(blocks) == 1, card
    code = blocks[0]
    for name, value in placeholders.items():
        assert name in code, f"{name} is not in the snippet"
        code = code.replace(name, value)
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "model_card_snippet", "exec"), namespace)  # the card's own code
    return namespace, printed.getvalue().strip()


@pytest.mark.parametrize(("pooling", "vote"), [("mean", True), ("cls", False), ("pooler", True)])
def test_classifier_card_snippet_gives_the_trained_models_logits(
    pooling: str, vote: bool, tiny_bert: Path, intent_data: Path, tmp_path: Path
) -> None:
    raw = classifier_recipe(tiny_bert, intent_data)
    raw["task"].update(pooling=pooling, neighbours=False)
    recipe = parse_recipe(raw)
    train_examples, val_examples, test_examples = splits(raw)
    trained = train_adapter(recipe, describe_folder(tiny_bert), train_examples, val_examples)
    assert trained.model.pooling.mode == pooling and trained.model.neighbours is None
    if vote:  # a vote of the training rows, whatever validation would choose on such tiny data
        trained.model.neighbours = neighbour_vote(trained, train_examples)
    folder = save_adapter(trained.model, tmp_path / "adapter", contract=trained.contract)
    evaluation = report_dict(recipe, trained, evaluate_adapter(trained, test_examples, recipe.evaluation, 32))
    if vote:  # as report_dict writes it when training chose the vote
        evaluation["neighbours"] = {"chosen": trained.model.neighbours.settings(), "validation_log_loss": {}}
    card = model_card(recipe, evaluation, "tiny-bert", "f" * 16)
    assert ("- neighbour vote: the 5 nearest of" in card) is vote

    text = test_examples[0].text
    namespace, printed = run_card_snippet(card, BASE_PATH=str(tiny_bert), ADAPTER_DIR=str(folder), TEXT=text)
    batch = collate(
        classification_features([text], None, trained.tokenizer, 32), trained.tokenizer.pad_token_id
    )
    with torch.no_grad():
        expected = trained.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(namespace["logits"], expected, atol=1e-5)
    assert printed == trained.labels[int(expected.argmax())]
    if vote:  # the vote changes the logits (a snippet that skipped it would fail above)
        head_only = trained.model.head(trained.model.features(batch["input_ids"], batch["attention_mask"]))
        assert not torch.allclose(expected, head_only.log_softmax(-1), atol=1e-3)


@pytest.mark.parametrize(
    ("decoding", "method"), [("greedy", "lora"), ("constrained", "lora"), ("greedy", "qlora")]
)
def test_causal_card_snippet_generates_what_evaluation_generates(
    decoding: str, method: str, tiny_llama: Path, sft_data: Path, tmp_path: Path
) -> None:
    raw = sft_recipe(tiny_llama, sft_data)
    raw["evaluation"]["decoding"] = decoding
    raw["method"]["type"] = method  # qlora: the card loads the base 4-bit, as it was evaluated
    if method == "qlora":
        raw["merge"]["enabled"] = False
    recipe = parse_recipe(raw)
    train_examples, val_examples, test_examples = splits(raw)
    trained = train_adapter(recipe, describe_folder(tiny_llama), train_examples, val_examples)
    folder = save_adapter(trained.model, tmp_path / "adapter", contract=trained.contract)
    evaluation = report_dict(recipe, trained, evaluate_adapter(trained, test_examples, recipe.evaluation, 64))
    card = model_card(recipe, evaluation, "tiny-llama", "f" * 16)

    request = "my parcel never came"
    _, printed = run_card_snippet(card, BASE_PATH=str(tiny_llama), ADAPTER_DIR=str(folder), REQUEST=request)
    prompt = trained.contract.render(request)  # the serving contract, as `serve` renders an input
    assert prompt == recipe.task.prompt_template.replace("{prompt}", request)
    constraint = None
    if decoding == "constrained":  # as evaluation decodes: the answer set, the reply after " | " free
        constraint = AnswerConstraint.build(trained.labels, trained.tokenizer, " | ")
    budget = trained.contract.max_new_tokens  # the answer budget evaluation used
    budget = max(budget, constraint.longest) if constraint else budget
    (expected,) = generate(trained.model, trained.tokenizer, [prompt], budget, 64, constraint=constraint)
    assert printed == expected.strip()
    if decoding == "constrained":
        assert answer_key(printed, " | ") in trained.labels
