"""Score a causal LM on a closed label set by the log-likelihood of each label, instead of free generation.

For a prompt ``p`` and labels ``y_1..y_K`` the score of ``y_k`` is ``log P(y_k + EOS | p)``, summed over its
tokens; the prediction is the arg-max. Unlike greedy exact match, every answer is a valid label, and a model that
ranks the right label first but would have spelt it slightly wrong still scores.

All labels of one prompt go through the model in a single forward pass: the prompt once, then every label's
tokens packed after it, each label block attending to the prompt and causally to itself only (a 4D attention
mask, position ids restarting after the prompt). That costs ``len(prompt) + sum(len(label))`` tokens per prompt
instead of ``K * (len(prompt) + len(label))``.

Only benchmarks/quality.py scores this way (its "label scoring" row); the product decodes over a closed answer
set with ``adapter_registry.decoding`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from adapter_registry.training.features import prompt_ids


def label_token_ids(labels: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """Each label's continuation tokens, closed by the end-of-sequence token (as in SFT training)."""
    eos = tokenizer.eos_token_id
    ids = [
        tokenizer(label, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        for label in labels
    ]
    empty = [label for label, tokens in zip(labels, ids, strict=True) if not tokens]
    if empty:
        raise ValueError(f"labels {empty[:5]} tokenise to nothing; they cannot be scored")
    return ids


def _packed_row(prompt: list[int], labels: list[list[int]]) -> tuple[list[int], list[int], list[int]]:
    """(input ids, position ids, block id: -1 for the prompt, k for label k) of one packed row."""
    ids, positions, blocks = list(prompt), list(range(len(prompt))), [-1] * len(prompt)
    for k, tokens in enumerate(labels):
        inputs = tokens[:-1]  # the last token is only predicted, never fed
        ids += inputs
        positions += range(len(prompt), len(prompt) + len(inputs))
        blocks += [k] * len(inputs)
    return ids, positions, blocks


def _attention_mask(blocks: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (batch, 1, q, kv) mask: causal, and a label block sees the prompt and itself only."""
    n = blocks.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    q, kv = blocks.unsqueeze(2), blocks.unsqueeze(1)
    allowed = causal & ((kv == -1) | (kv == q)) & valid.unsqueeze(1)
    allowed |= torch.eye(n, dtype=torch.bool)  # padded rows attend to themselves (no NaN); never read
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


@torch.no_grad()
def label_log_likelihoods(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    labels: Sequence[str],
    max_length: int = 256,
    batch_size: int = 4,
) -> np.ndarray:
    """``(len(prompts), len(labels))`` summed log-probabilities of each label (and EOS) after each prompt."""
    model.eval()
    label_ids = label_token_ids(labels, tokenizer)
    prompts_ids = prompt_ids(prompts, tokenizer, max_length)
    scores = np.zeros((len(prompts), len(labels)), dtype=np.float64)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dtype = next(model.parameters()).dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    for start in range(0, len(prompts_ids), batch_size):
        rows = [_packed_row(p, label_ids) for p in prompts_ids[start : start + batch_size]]
        width = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        blocks = torch.full((len(rows), width), -2, dtype=torch.long)
        for i, (row_ids, row_pos, row_blocks) in enumerate(rows):
            n = len(row_ids)
            ids[i, :n], positions[i, :n], blocks[i, :n] = (
                torch.tensor(row_ids),
                torch.tensor(row_pos),
                torch.tensor(row_blocks),
            )
        mask = _attention_mask(blocks, blocks != -2, dtype)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        for i, p in enumerate(prompts_ids[start : start + batch_size]):
            offset = len(p)
            for k, tokens in enumerate(label_ids):
                # the first label token is predicted by the prompt's last position, token j by input j-1
                where = [len(p) - 1, *range(offset, offset + len(tokens) - 1)]
                scores[start + i, k] = float(log_probs[i, where, tokens].sum())
                offset += len(tokens) - 1
    return scores


def label_scoring_predictions(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    labels: Sequence[str],
    max_length: int = 256,
    batch_size: int = 4,
) -> list[str]:
    """The most likely label for each prompt."""
    scores = label_log_likelihoods(model, tokenizer, prompts, labels, max_length, batch_size)
    return [labels[k] for k in scores.argmax(1)]
