"""What the adapter pool takes and gives: the adapters it holds, a request's raw input, a generation, an adapter
prepared for install, and the pool's errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from adapter_registry.contract import ServingContract
from adapter_registry.decoding import AnswerConstraint


class PoolError(ValueError):
    """An adapter the pool cannot load, or a request naming an adapter it does not hold."""


class PromptTooLong(PoolError):
    """A prompt longer than the pool takes, or too long to leave room for the tokens it may generate."""


class NotForThisServer(PoolError):
    """An adapter made for a server set up otherwise (its base quantised differently, another task)."""


@dataclass(frozen=True)
class AdapterInfo:
    """One adapter the pool holds."""

    name: str
    slot: str  # internal id; a replacement gets a new one
    source: str  # the folder it was loaded from
    layers: int  # layers it targets
    ranks: tuple[int, ...]  # distinct ranks
    nbytes: int  # bytes of its A/B matrices as resident in the pool
    metadata: dict[str, str] = field(default_factory=dict)  # e.g. registry version, fingerprint
    answers: int = 0  # size of its closed answer set (constrained decoding); 0: it decodes freely
    contract: ServingContract | None = None  # how its requests are rendered and decoded (serving.json)


@dataclass(frozen=True)
class Input:
    """A request's raw input (the user's text, or a record's fields), rendered by the serving contract of the
    adapter version that answers it (``serving.json``)."""

    value: str | Mapping[str, Any]


@dataclass(frozen=True)
class Generation:
    """One generated completion."""

    adapter: str | None
    text: str
    prompt_tokens: int
    new_tokens: int
    served_by: AdapterInfo | None = None  # the adapter version that produced it (None: the base)
    constrained: bool = False  # decoded over the adapter's closed answer set
    prompt: str = ""  # the prompt it continued (an Input rendered by its contract)
    finish_reason: str = (
        "length"  # "stop": it ended with the end-of-sequence token; "length": its budget ran out
    )


@dataclass(frozen=True)
class PreparedAdapter:
    """An adapter's matrices read and checked against the base, not yet installed (``AdapterPool.prepare``)."""

    info: AdapterInfo  # what it will serve as (its slot is given at install)
    weights: dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # module -> (A, B, scaling)
    constraint: AnswerConstraint | None
