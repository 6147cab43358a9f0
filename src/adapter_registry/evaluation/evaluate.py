"""Adapter vs base on the held-out split, with 95% intervals and a forgetting probe.

For generation the base is the base model itself (the adapter disabled, same prompts, same decoding). For
classification the base has no head, so the baseline is the linear probe on the frozen base's features: the
cheapest thing that an adapter must beat to be worth registering.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import torch
from torch import nn

from adapter_registry.decoding import AnswerConstraint, allowed_tokens_per_row
from adapter_registry.evaluation.metrics import (
    HIGHER_IS_BETTER,
    accuracy,
    beats,
    bootstrap_interval,
    macro_f1,
    per_class_f1,
)
from adapter_registry.recipes.schema import EvaluationSpec
from adapter_registry.training.adapter import TrainedAdapter, pooled_features
from adapter_registry.training.features import (
    classification_features,
    prompt_ids,
    sequential_batches,
    sft_features,
    sorted_batches,
)
from adapter_registry.vocabulary import ANSWER_SEPARATOR


@dataclass
class EvaluationReport:
    """Scores of the adapter and of its baseline on the same test rows."""

    task_metric: str
    metrics: dict[str, float]  # adapter: name, name_ci_low, name_ci_high
    base_metrics: dict[str, float]  # baseline: name, name_ci_low, name_ci_high
    baseline: str  # what "base" means here
    beats_base: bool
    rows: int
    forgetting: dict[str, float] = field(default_factory=dict)
    per_class_f1: dict[str, float] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    samples: list[dict[str, str]] = field(default_factory=list)  # a few predictions, for people
    # generation: every test row's prompt, expected answer and what adapter and base answered, in order (kept out
    # of the JSON report; saved as predictions.json so a served answer can be compared with the evaluated one)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    # classification: the adapter's label index for each test row, in order (kept out of the JSON report)
    predictions: list[int] = field(default_factory=list)

    def flat_metrics(self) -> dict[str, float]:
        """Adapter metrics, the base's as ``base.<name>``, ``beats_base`` and forgetting figures."""
        flat = dict(self.metrics)
        flat.update({f"base.{k}": v for k, v in self.base_metrics.items()})
        flat.update({f"forgetting.{k}": v for k, v in self.forgetting.items()})
        flat["beats_base"] = float(self.beats_base)
        return flat


def general_text() -> list[str]:
    """A small set of general English sentences: the forgetting probe."""
    text = resources.files("adapter_registry.resources").joinpath("general_text.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _with_interval(name: str, fn: Any, y: np.ndarray, pred: np.ndarray, samples: int) -> dict[str, float]:
    low, high = bootstrap_interval(fn, y, pred, samples)
    return {name: fn(y, pred), f"{name}_ci_low": low, f"{name}_ci_high": high}


def _mean(y: np.ndarray, values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def _loss_metrics(losses: np.ndarray, samples: int) -> dict[str, float]:
    return _with_interval("loss", _mean, losses, losses, samples)


@torch.no_grad()
def causal_lm_losses(
    model: nn.Module, features: Sequence[dict], pad_id: int, batch_size: int = 16
) -> np.ndarray:
    """Per-example mean loss on target tokens."""
    model.eval()
    losses = np.zeros(len(features))
    for rows, batch in sorted_batches(features, batch_size, pad_id):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        token_loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            labels.reshape(-1),
            ignore_index=-100,
            reduction="none",
        ).view(labels.shape)
        mask = (labels != -100).float()
        per_row = (token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)
        losses[rows] = per_row.numpy()
    return losses


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    max_length: int,
    batch_size: int = 16,
    constraint: AnswerConstraint | None = None,
) -> list[str]:
    """Greedy answers, prompts left-padded in length-sorted batches.

    With a ``constraint`` the decoding is constrained: each step may only extend a prefix of one of its answers
    (a token trie, each answer closed by end-of-sequence), so every answer is one of them. It costs what greedy
    decoding costs, unlike scoring every choice's likelihood. Serving decodes a registered adapter's rows with
    the same :class:`AnswerConstraint` and the same ``prefix_allowed_tokens_fn``.
    """
    model.eval()
    ids = prompt_ids(prompts, tokenizer, max_length)
    pad = tokenizer.pad_token_id
    answers = [""] * len(prompts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for idx in sequential_batches(len(order), batch_size):
        rows = [order[i] for i in idx]
        width = max(len(ids[r]) for r in rows)
        input_ids = torch.tensor([[pad] * (width - len(ids[r])) + ids[r] for r in rows])
        mask = torch.tensor([[0] * (width - len(ids[r])) + [1] * len(ids[r]) for r in rows])
        constrain = (
            None
            if constraint is None
            else allowed_tokens_per_row([constraint] * len(rows), width, model.config.vocab_size)
        )
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            prefix_allowed_tokens_fn=constrain,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        for r, row in zip(rows, out[:, width:], strict=True):
            answers[r] = tokenizer.decode(row, skip_special_tokens=True)
    return answers


def answer_key(text: str, separator: str) -> str:
    """The part of an answer exact-match compares: the text before the separator, trimmed, lower-cased."""
    return (
        text.split(separator.strip() or "\n", 1)[0].strip().lower()
        if separator.strip()
        else text.strip().lower()
    )


def evaluate_causal_lm(
    trained: TrainedAdapter,
    test_examples: Sequence[Any],
    spec: EvaluationSpec,
    separator: str,
    max_length: int,
) -> EvaluationReport:
    model: Any = trained.model
    tokenizer = trained.tokenizer
    pad = tokenizer.pad_token_id
    feats = sft_features(test_examples, tokenizer, max_length)
    prompts = [e.prompt for e in test_examples]
    gold = [answer_key(e.answer, separator) for e in test_examples]
    # decoded through the serving contract (what `serve` does with the same request): its answer budget, and
    # for constrained decoding its answer set with the reply free after the separator
    contract = trained.contract
    constraint, max_new_tokens = None, contract.max_new_tokens if contract else spec.max_new_tokens
    if spec.decoding == "constrained":
        answers = contract.answers if contract else tuple(trained.labels)
        if not answers:
            raise ValueError(
                "constrained decoding needs the answers seen in training (trained.labels is empty)"
            )
        free_after = contract.answer_separator if contract else ""
        constraint = AnswerConstraint.build(
            answers, tokenizer, free_after
        )  # built once: adapter and base share it
        max_new_tokens = max(max_new_tokens, constraint.longest)  # room for any answer
    n = spec.bootstrap_samples
    scores: dict[str, dict[str, float]] = {"adapter": {}, "base": {}}
    outputs: dict[str, list[str]] = {}
    for who in ("adapter", "base"):
        context = model.disable_adapter() if who == "base" else nullcontext()
        with context:
            if "exact_match" in spec.metrics:
                outputs[who] = generate(
                    model, tokenizer, prompts, max_new_tokens, max_length, constraint=constraint
                )
                hits = np.array(
                    [answer_key(o, separator) == g for o, g in zip(outputs[who], gold, strict=True)]
                )
                scores[who].update(_with_interval("exact_match", _mean, hits, hits.astype(float), n))
            if "loss" in spec.metrics:
                scores[who].update(_loss_metrics(causal_lm_losses(model, feats, pad), n))
        if who == "adapter":
            forgetting_adapter = causal_lm_losses(model, _general_features(tokenizer, max_length), pad)
    with model.disable_adapter():
        forgetting_base = causal_lm_losses(model, _general_features(tokenizer, max_length), pad)
    rows = [
        {
            "row": i,
            "prompt": p,
            "expected": e.answer,
            "adapter": outputs.get("adapter", [""] * len(prompts))[i],
            "base": outputs.get("base", [""] * len(prompts))[i],
        }
        for i, (p, e) in enumerate(zip(prompts, test_examples, strict=True))
    ]
    report = _report(
        spec,
        scores,
        "the base model itself (adapter disabled, same prompts and decoding"
        + (", constrained to the training answers)" if constraint else ")"),
        len(feats),
        {
            "general_loss_base": float(forgetting_base.mean()),
            "general_loss_adapter": float(forgetting_adapter.mean()),
        },
        samples=[{k: v for k, v in r.items() if k != "row"} for r in rows[:5]],
    )
    report.outputs = rows if outputs else []
    return report


def _general_features(tokenizer: Any, max_length: int) -> list[dict]:
    from adapter_registry.data.formats import SftExample

    return sft_features([SftExample(((s, True),)) for s in general_text()], tokenizer, max_length)


@torch.no_grad()
def classifier_logits(model: Any, features: Sequence[dict], pad_id: int, batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = np.zeros((len(features), len(model.labels)), dtype=np.float32)
    for rows, batch in sorted_batches(features, batch_size, pad_id):
        out[rows] = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.numpy()
    return out


def _cross_entropy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return np.asarray(-log_probs[np.arange(len(y)), y])


def evaluate_classifier(
    trained: TrainedAdapter, test_examples: Sequence[Any], spec: EvaluationSpec, max_length: int
) -> EvaluationReport:
    from sklearn.metrics import confusion_matrix

    model: Any = trained.model
    tokenizer, labels = trained.tokenizer, trained.labels
    index = {label: i for i, label in enumerate(labels)}
    unseen = sorted({e.label for e in test_examples} - set(index))
    if unseen:
        raise ValueError(f"test labels never seen in training: {unseen[:5]}; the adapter cannot predict them")
    y = np.array([index[e.label] for e in test_examples])
    feats = classification_features([e.text for e in test_examples], y.tolist(), tokenizer, max_length)
    pad = tokenizer.pad_token_id
    logits = {"adapter": classifier_logits(model, feats, pad)}
    assert trained.probe is not None
    with model.encoder.disable_adapter():
        base_features = pooled_features(model, feats, pad)
        general = classification_features(general_text(), None, tokenizer, max_length)
        general_base = pooled_features(model, general, pad)
    general_adapter = pooled_features(model, general, pad)
    logits["base"] = base_features @ trained.probe.weight.T + trained.probe.bias
    n = spec.bootstrap_samples
    scores: dict[str, dict[str, float]] = {}
    for who, values in logits.items():
        pred = values.argmax(1)
        scores[who] = {}
        if "accuracy" in spec.metrics:
            scores[who].update(_with_interval("accuracy", accuracy, y, pred, n))
        if "macro_f1" in spec.metrics:
            scores[who].update(_with_interval("macro_f1", macro_f1, y, pred, n))
        if "loss" in spec.metrics:
            scores[who].update(_loss_metrics(_cross_entropy(values, y), n))
    pred = logits["adapter"].argmax(1)
    cosine = (general_base * general_adapter).sum(1) / (
        np.linalg.norm(general_base, axis=1) * np.linalg.norm(general_adapter, axis=1) + 1e-12
    )
    report = _report(
        spec,
        scores,
        f"linear probe on the frozen base's features (C={trained.probe.C:g})",
        len(y),
        {"general_embedding_cosine": float(cosine.mean())},
    )
    report.per_class_f1 = per_class_f1(y, pred, labels)
    report.confusion = confusion_matrix(y, pred, labels=list(range(len(labels)))).tolist()
    report.labels = labels
    report.predictions = pred.tolist()
    report.outputs = [
        {"row": i, "text": e.text, "expected": e.label, "adapter": labels[p]}
        for i, (e, p) in enumerate(zip(test_examples, pred, strict=True))
    ]
    report.samples = [{k: v for k, v in r.items() if k != "row"} for r in report.outputs[:5]]
    return report


def _report(
    spec: EvaluationSpec,
    scores: dict[str, dict[str, float]],
    baseline: str,
    rows: int,
    forgetting: dict[str, float],
    samples: list[dict[str, str]] | None = None,
) -> EvaluationReport:
    metric = spec.task_metric
    adapter, base = scores["adapter"], scores["base"]
    won = beats(
        adapter[f"{metric}_ci_low"], adapter[f"{metric}_ci_high"], base[metric], HIGHER_IS_BETTER[metric]
    )
    return EvaluationReport(metric, adapter, base, baseline, won, rows, forgetting, samples=samples or [])


def evaluate_adapter(
    trained: TrainedAdapter,
    test_examples: Sequence[Any],
    spec: EvaluationSpec,
    max_length: int,
    separator: str = ANSWER_SEPARATOR,
) -> EvaluationReport:
    """Score adapter and baseline on the test rows (at most ``spec.max_test_rows`` of them)."""
    if not test_examples:
        raise ValueError("the test split is empty")
    rows = list(test_examples)[: spec.max_test_rows] if spec.max_test_rows else list(test_examples)
    if trained.task == "sequence_classification":
        return evaluate_classifier(trained, rows, spec, max_length)
    return evaluate_causal_lm(trained, rows, spec, separator, max_length)
