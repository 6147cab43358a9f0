"""A canary on one replica: which requests its candidate answers, the live figures of both versions, and the
answers users send feedback on.

**Routing.** While the registry says a canary of NAME runs (``registry.canary``), ``sync`` serves the candidate
beside production under the internal name ``NAME:canary`` (no registered adapter can be called that: MLflow refuses
``:`` in names, and requests naming it are refused), and a request for NAME goes to the candidate when its key
falls in the canary's share: ``sha256(canary id, key) mod 10000 < percent × 100``. The key is the request's
``X-Canary-Key`` header or ``user`` field, else its tenant, else its request id: the same key lands on the same
version for the whole canary (sticky), and the next canary draws anew. With ``shadow``, production answers every
request; the requests whose key falls in the share are also run on the candidate, in the background, and its answer
is only recorded (agreement with production's, and a label's verdict when feedback brings one). Responses name the
real adapter, the version that answered and its digest, never the internal name.

**Figures** (``canary.ArmFigures``, per version, reset when a new canary starts): requests, errors (the causes in
``ERROR_REASONS``: the version's own failures, not the server's load), latency, the share of answers inside the
closed answer set (a constrained adapter's always are; a greedy one's category, the text before the separator, is
checked against its contract's answers when it has them, else not counted), feedback, and agreement.

**Feedback** (``POST /v1/feedback``) names a request this replica answered, within ``ttl`` seconds: unknown ids and
expired ones are told apart (404, 410) for as many ids again as the book holds; feedback on one request counts once.
Everything here runs in the server's event loop: no locks.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adapter_registry.canary import ArmFigures

if TYPE_CHECKING:
    from adapter_registry.contract import ServingContract

__all__ = [
    "CANARY_SUFFIX", "ERROR_REASONS", "Answered", "CanaryFigures", "CanaryRoute", "ExpiredRequest", "FeedbackBook",
    "UnknownRequest", "answer_key", "canary_slot", "in_answer_set",
]  # fmt: skip

CANARY_SUFFIX = ":canary"
# refusals that count against the version that would have answered (its contract, its files, its speed); the
# others (queue full, capacity, shutting down, client gone) say how loaded the replica is, not how good the version
ERROR_REASONS = frozenset({"internal", "load_failed", "deadline", "too_long", "bad_input", "refused"})


def canary_slot(name: str) -> str:
    """The internal name the candidate of ``name``'s canary is served under."""
    return name + CANARY_SUFFIX


@dataclass(frozen=True)
class CanaryRoute:
    """A running canary as this replica serves it."""

    name: str  # the adapter
    version: int  # the candidate
    baseline: int  # the production version it started against
    percent: int
    shadow: bool
    canary_id: int  # its start event's sequence number

    @property
    def slot(self) -> str:
        return canary_slot(self.name)

    def takes(self, key: str) -> bool:
        """Whether a request with ``key`` falls in the candidate's share (the same key, the same answer)."""
        digest = hashlib.sha256(f"{self.canary_id}\0{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % 10_000 < self.percent * 100


def answer_key(text: str, separator: str) -> str:
    """The part of an answer exact match compares: the text before the separator (all of it without one)."""
    return (text.split(separator, 1)[0] if separator else text).strip()


def in_answer_set(text: str, contract: ServingContract | None) -> bool | None:
    """Whether an answer's category is one of the adapter's answers; None when it has no closed answer set."""
    if contract is None:
        return None
    if contract.decoding == "constrained":
        return True  # decoded over the set: inside by construction
    if not contract.answers:
        return None
    return answer_key(text, contract.answer_separator) in contract.answers


# ------------------------------------------------------------------------------------------------ figures
@dataclass
class _Window:
    """The figures of one canary on this replica."""

    canary_id: int
    started: float = field(default_factory=time.time)
    arms: dict[int, ArmFigures] = field(default_factory=dict)
    mirrored: int = 0  # shadow copies started
    shadow_skipped: int = 0  # shadow copies not run (the queue was full)

    def arm(self, version: int) -> ArmFigures:
        return self.arms.setdefault(version, ArmFigures(version))


class CanaryFigures:
    """Per adapter under canary, the figures of each version since its canary started (on this replica)."""

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    def window(self, route: CanaryRoute) -> _Window:
        found = self._windows.get(route.name)
        if found is None or found.canary_id != route.canary_id:
            found = self._windows[route.name] = _Window(route.canary_id)
        return found

    def answered(self, route: CanaryRoute, version: int, latency_ms: float, in_set: bool | None) -> None:
        arm = self.window(route).arm(version)
        arm.requests += 1
        arm.observe_latency(latency_ms)
        if in_set is not None:
            arm.in_set.add(in_set)

    def failed(self, route: CanaryRoute, version: int) -> None:
        arm = self.window(route).arm(version)
        arm.requests += 1
        arm.errors += 1

    def agreed(self, route: CanaryRoute, version: int, agrees: bool) -> None:
        self.window(route).arm(version).agreement.add(agrees)

    def feedback(self, name: str, canary_id: int, version: int, correct: bool) -> bool:
        """Count a user's verdict on an answer of ``version``; False when its canary is over (not counted)."""
        found = self._windows.get(name)
        if found is None or found.canary_id != canary_id or not canary_id:
            return False
        found.arm(version).feedback.add(correct)
        return True

    def report(self, routes: dict[str, CanaryRoute]) -> dict[str, Any]:
        """The running canaries' figures, as ``GET /v1/canary`` sends them."""
        out = {}
        for name, route in sorted(routes.items()):
            window = self.window(route)
            for version in (route.baseline, route.version):
                window.arm(version)
            out[name] = {
                "canary": route.canary_id, "candidate": route.version, "baseline": route.baseline,
                "percent": route.percent, "shadow": route.shadow, "since": window.started,
                "mirrored": window.mirrored, "shadow_skipped": window.shadow_skipped,
                "versions": {str(v): a.to_dict() for v, a in sorted(window.arms.items())},
            }  # fmt: skip
        return out


# ------------------------------------------------------------------------------------------------ feedback
class UnknownRequest(KeyError):
    """No request with this id was answered by this replica (or so long ago that even its expiry is forgotten)."""


class ExpiredRequest(KeyError):
    """The request was answered, but longer ago than the feedback window."""


@dataclass
class Answered:
    """An answered request, kept for feedback."""

    adapter: str
    version: int
    key: str  # its answer's category (answer_key)
    canary_id: int = 0  # the canary running for its adapter when it was answered (0: none)
    at: float = 0.0  # clock time
    shadow_version: int | None = None  # the candidate that ran on a copy of it (shadow), and its answer
    shadow_key: str | None = None
    feedback: dict[str, Any] | None = None  # the feedback given, once


class FeedbackBook:
    """Answered requests by id for ``ttl`` seconds (at most ``capacity``); expired ids are remembered as expired
    for as many again."""

    def __init__(
        self, ttl: float = 3600.0, capacity: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"--feedback-ttl {ttl} must be positive (seconds)")
        self.ttl = ttl
        self.capacity = capacity
        self.clock = clock
        self._live: OrderedDict[str, Answered] = OrderedDict()
        self._expired: OrderedDict[str, float] = OrderedDict()

    def add(self, request_id: str, answered: Answered) -> None:
        answered.at = self.clock()
        self._live[request_id] = answered
        self._prune()

    def find(self, request_id: str) -> Answered:
        """The request (UnknownRequest, ExpiredRequest otherwise)."""
        self._prune()
        found = self._live.get(request_id)
        if found is not None:
            return found
        if request_id in self._expired:
            raise ExpiredRequest(request_id)
        raise UnknownRequest(request_id)

    def get(self, request_id: str) -> Answered | None:
        return self._live.get(request_id)

    def _prune(self) -> None:
        now = self.clock()
        while self._live:
            request_id, oldest = next(iter(self._live.items()))
            if now - oldest.at <= self.ttl and len(self._live) <= self.capacity:
                break
            del self._live[request_id]
            self._expired[request_id] = oldest.at
        while len(self._expired) > self.capacity:
            self._expired.popitem(last=False)
