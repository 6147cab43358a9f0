"""Examples → token features, length-grouped batches and dynamic padding.

A feature is a dict of plain lists: ``input_ids`` and ``labels`` (causal LM: -100 on every non-target token, so
the loss is on the answer only) or ``input_ids`` and ``label`` (classification).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

IGNORE = -100
Feature = dict[str, Any]


def sft_features(examples: Sequence[Any], tokenizer: Any, max_length: int) -> list[Feature]:
    """Tokenise (text, is_target) segments; the end-of-sequence token closes the last target."""
    eos = tokenizer.eos_token_id
    features = []
    for example in examples:
        ids: list[int] = []
        labels: list[int] = []
        for text, is_target in example.segments:
            tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += tokens
            labels += tokens if is_target else [IGNORE] * len(tokens)
        if eos is not None:
            ids.append(eos)
            labels.append(eos)
        features.append({"input_ids": ids[:max_length], "labels": labels[:max_length]})
    return features


def prompt_ids(prompts: Sequence[str], tokenizer: Any, max_length: int) -> list[list[int]]:
    """Token ids of generation prompts (no special tokens, as in training)."""
    return [tokenizer(p, add_special_tokens=False)["input_ids"][-max_length:] for p in prompts]


def classification_features(
    texts: Sequence[str], labels: Sequence[int] | None, tokenizer: Any, max_length: int
) -> list[Feature]:
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    if labels is None:
        return [{"input_ids": ids} for ids in encoded]
    return [{"input_ids": ids, "label": int(label)} for ids, label in zip(encoded, labels, strict=True)]


def collate(features: Sequence[Feature], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest row."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    batch: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
    if "labels" in features[0]:
        batch["labels"] = torch.full((len(features), width), IGNORE, dtype=torch.long)
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        ids[row, :n] = torch.tensor(feature["input_ids"])
        mask[row, :n] = 1
        if "labels" in feature:
            batch["labels"][row, :n] = torch.tensor(feature["labels"])
    if "label" in features[0]:
        batch["labels"] = torch.tensor([f["label"] for f in features], dtype=torch.long)
    return batch


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffle, sort by length inside windows of 50 batches, cut into batches, shuffle the batches.

    Rows of similar length share a batch (less padding), while the order still changes every epoch.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def batch_stream(lengths: Sequence[int], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless stream of length-grouped batches, epoch after epoch (deterministic given the seed)."""
    epoch = 0
    while True:
        yield from length_grouped_batches(lengths, batch_size, seed, epoch)
        epoch += 1


def sequential_batches(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def sorted_batches(
    features: Sequence[Feature], batch_size: int, pad_id: int
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Inference batches of rows sorted by length (little padding), each with the rows' original indices."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield rows, collate([features[r] for r in rows], pad_id)
