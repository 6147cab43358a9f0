"""Constrained decoding over a closed answer set: a token trie of the answers, each closed by end-of-sequence.

An SFT recipe with ``evaluation.decoding: constrained`` is scored this way. The answers it was trained on travel
with the adapter (``answers.json`` in its folder, written by ``training.models.save_adapter``), so that serving
decodes the registered adapter over the same answer set it was evaluated with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ANSWERS_FILE = "answers.json"

Trie = dict[tuple[int, ...], list[int]]
AllowedFn = Callable[[int, torch.Tensor], "list[int] | torch.Tensor"]


def choice_trie(choices: Sequence[str], tokenizer: Any) -> tuple[Trie, int]:
    """({generated prefix: allowed next tokens}, end-of-sequence id) for constrained decoding."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("constrained decoding needs a tokenizer with an end-of-sequence token")
    if not choices:
        raise ValueError("constrained decoding needs at least one answer to choose from")
    nexts: dict[tuple[int, ...], set[int]] = {}
    for choice in choices:
        tokens = tokenizer(choice, add_special_tokens=False)["input_ids"] + [eos]
        for i, token in enumerate(tokens):
            nexts.setdefault(tuple(tokens[:i]), set()).add(token)
    return {prefix: sorted(tokens) for prefix, tokens in nexts.items()}, eos


def longest_answer(choices: Sequence[str], tokenizer: Any) -> int:
    """Tokens of the longest choice, its end-of-sequence included: the fewest new tokens that spell any choice."""
    return 1 + max(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in choices)


def allowed_tokens(trie: Trie, eos: int, width: int) -> AllowedFn:
    """``prefix_allowed_tokens_fn`` for prompts left-padded to ``width``: the trie's next tokens, else EOS."""

    def allowed(_: int, sequence: torch.Tensor) -> list[int]:
        return trie.get(tuple(sequence[width:].tolist()), [eos])

    return allowed


def allowed_tokens_per_row(
    tries: Sequence[tuple[Trie, int] | None], width: int, vocab_size: int
) -> AllowedFn:
    """``prefix_allowed_tokens_fn`` for a mixed batch: row i follows ``tries[i]``, or decodes freely if None."""
    everything = torch.arange(vocab_size)  # one tensor index per free row and step, not a 49k-element list

    def allowed(row: int, sequence: torch.Tensor) -> list[int] | torch.Tensor:
        entry = tries[row]
        if entry is None:
            return everything
        trie, eos = entry
        return trie.get(tuple(sequence[width:].tolist()), [eos])

    return allowed


def write_answers(folder: Path | str, answers: Sequence[str]) -> None:
    """Record the closed answer set beside an adapter's weights."""
    (Path(folder) / ANSWERS_FILE).write_text(
        json.dumps({"decoding": "constrained", "answers": list(answers)}, indent=2, ensure_ascii=False)
    )


def read_answers(folder: Path | str) -> list[str]:
    """The adapter's closed answer set; [] for an adapter that decodes freely (no ``answers.json``)."""
    path = Path(folder) / ANSWERS_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc}); it should be written by save_adapter") from exc
    answers = data.get("answers") if isinstance(data, dict) else None
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a for a in answers):
        raise ValueError(f"{path}: 'answers' must be a non-empty list of non-empty strings")
    return answers
