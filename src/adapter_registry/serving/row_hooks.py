"""A row's hooks while the pool generates a batch: who answers it, its text as it grows (streaming), and whether
anyone still waits for it (a row nobody waits for stops)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from adapter_registry.serving.entities import AdapterInfo


@dataclass(frozen=True)
class RowHooks:
    """What the caller of one row wants to hear while it is generated; called from the generating thread."""

    on_start: Callable[[AdapterInfo | None], None] | None = None  # the version answering, before any token
    on_text: Callable[[str], None] | None = None  # each new piece of the answer's text, in order
    abandoned: Callable[[], bool] | None = None  # True once nobody waits for the row: it stops generating


# transformers' BaseStreamer (put/end) and StoppingCriteria (a call per step) by their interfaces: importing
# transformers.generation here would cost every importer of this module a second (the vllm commands import sync).
class RowStreamer:
    """Hands each row's text to its ``on_text`` as ``generate`` produces tokens, up to the row's end or budget.

    The text of the tokens so far is decoded at every step and its new part handed on (held back while it ends
    in an incomplete character); ``finish`` hands on whatever the final text adds."""

    def __init__(
        self,
        decode: Callable[[Sequence[int]], str],
        rows: Sequence[RowHooks | None],
        limits: Sequence[int],
        eos: int,
    ) -> None:
        self.decode = decode  # token ids -> text, as the answer is decoded
        self.rows = rows
        self.limits = limits
        self.eos = eos
        self.ids: list[list[int]] = [[] for _ in rows]
        self.sent = [""] * len(rows)
        self.done = [h is None or h.on_text is None for h in rows]
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call hands over the prompts
            self.prompt_seen = True
            return
        for i, token in enumerate(value.reshape(-1).tolist()):
            if self.done[i]:
                continue
            if token == self.eos or len(self.ids[i]) >= self.limits[i]:
                self.done[i] = True
                continue
            self.ids[i].append(int(token))
            self._send(i, self.decode(self.ids[i]))

    def end(self) -> None:
        pass

    def finish(self, row: int, text: str) -> None:
        if self.rows[row] is not None and self.rows[row].on_text is not None:  # type: ignore[union-attr]
            self._send(row, text)

    def _send(self, row: int, text: str) -> None:
        if text.endswith("\ufffd") or not text.startswith(self.sent[row]) or text == self.sent[row]:
            return
        hook = self.rows[row]
        assert hook is not None and hook.on_text is not None
        hook.on_text(text[len(self.sent[row]) :])
        self.sent[row] = text


class Abandoned:
    """Stops the rows nobody waits for any more (their client left, or their deadline passed)."""

    def __init__(self, rows: Sequence[RowHooks | None]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        gone = [bool(h is not None and h.abandoned is not None and h.abandoned()) for h in self.rows]
        return torch.tensor(gone, dtype=torch.bool, device=input_ids.device)
