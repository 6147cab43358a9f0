"""Constrained decoding over a closed answer set: a token trie of the answers, each closed by end-of-sequence.

An SFT recipe with ``evaluation.decoding: constrained`` is scored this way. The answers it was trained on travel
with the adapter in its serving contract (``serving.json``, see ``contract``), so that serving decodes the
registered adapter over the same answer set, exactly as it was evaluated. With the recipe's
``answer_field_separator`` (``"refund | Refund issued."``) an answer goes on freely once the closed part and the
separator are written: the category is always one of the set, the reply after it is the model's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

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


@dataclass(frozen=True)
class AnswerConstraint:
    """A closed answer set as a token trie. With a separator, ``answer + separator`` may go on freely."""

    trie: Trie
    eos: int
    size: int  # answers in the set
    longest: int  # new tokens that the longest closed part needs, its end included
    free_after: frozenset[tuple[int, ...]] = frozenset()  # generated prefixes after which decoding is free

    @classmethod
    def build(cls, answers: Sequence[str], tokenizer: Any, separator: str = "") -> AnswerConstraint:
        trie, eos = choice_trie(answers, tokenizer)
        core = separator.rstrip()  # " | " -> " |": the reply's own first token carries its space
        if not core.strip():
            return cls(trie, eos, len(answers), longest_answer(answers, tokenizer))
        nexts = {prefix: set(tokens) for prefix, tokens in trie.items()}
        free = set()
        for answer in answers:
            ids = tokenizer(answer + core, add_special_tokens=False)["input_ids"]  # as training tokenised it
            for i, token in enumerate(ids):
                nexts.setdefault(tuple(ids[:i]), set()).add(token)
            free.add(tuple(ids))
        longest = max(longest_answer(answers, tokenizer), max(len(f) for f in free))
        return cls({p: sorted(t) for p, t in nexts.items()}, eos, len(answers), longest, frozenset(free))

    def allowed(self, generated: tuple[int, ...]) -> list[int] | None:
        """The tokens allowed after ``generated``; None once an answer and its separator are written (free)."""
        if any(generated[: len(prefix)] == prefix for prefix in self.free_after):
            return None
        return self.trie.get(generated, [self.eos])


def allowed_tokens_per_row(
    constraints: Sequence[AnswerConstraint | None], width: int, vocab_size: int
) -> AllowedFn:
    """``prefix_allowed_tokens_fn`` for a mixed batch: row i follows ``constraints[i]``, or decodes freely if None."""
    everything = torch.arange(vocab_size)  # one tensor index per free row and step, not a 49k-element list

    def allowed(row: int, sequence: torch.Tensor) -> list[int] | torch.Tensor:
        constraint = constraints[row]
        options = None if constraint is None else constraint.allowed(tuple(sequence[width:].tolist()))
        return everything if options is None else options

    return allowed
