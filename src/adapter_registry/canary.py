"""The canary policy and its test: when a candidate version that takes a share of an adapter's production traffic
is promoted to all of it, or rolled back, decided from live figures of both versions.

Ground floor: imports nothing of ours but ``closed`` (the server keeps the figures, ``rollout`` gathers them from
the fleet and acts through ``registry.canary``; both use the types here).

**The figures** of one version (``ArmFigures``): requests, errors, a latency histogram, and three quality signals,
each a share ``k`` of ``n``: answers inside the adapter's closed answer set (``in_set``), answers users marked
correct (``feedback``), and, for a shadowed candidate, answers equal to production's on the mirrored requests
(``agreement``).

**The test.** For the policy's metric, the difference ``d = p_candidate - p_production`` gets a one-sided interval
at ``confidence`` by Newcombe's hybrid score method (method 10 of Newcombe, Statistics in Medicine 1998: each
proportion's Wilson score interval, combined), computed at the two-sided level ``2 * confidence - 1`` so that each
bound is one-sided at ``confidence``:

- promote when the lower bound is above ``-allowed_drop`` (the candidate is no worse than allowed);
- roll back when the upper bound is below ``-allowed_drop`` (it is worse by more than allowed);
- neither until both versions have ``min_requests`` observations of the metric; a candidate with
  ``max_requests`` of them and still no verdict is rolled back (inconclusive: a canary must end).

Agreement has no production counterpart (production agrees with itself), so its own Wilson interval is tested
against ``1 - allowed_drop`` the same way. Errors are tested first, at every look and before ``min_requests``: the
candidate is rolled back at once when the lower bound of its error rate minus production's is above
``max_error_increase``. Looking again and again at growing figures inflates the error rates of a fixed-sample
test; ``min_requests`` and a high ``confidence`` keep that small (the canary benchmark reports what it took).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from adapter_registry.closed import Closed

__all__ = [
    "DEFAULT_CANARY_POLICY_PATH", "LATENCY_EDGES_MS", "ArmFigures", "CanaryPolicy", "CanaryPolicyError", "Share",
    "Verdict", "decide", "load_canary_policy", "newcombe_interval", "wilson_interval",
]  # fmt: skip

DEFAULT_CANARY_POLICY_PATH = Path("conf/base/canary_policy.yml")
METRICS = ("feedback_accuracy", "in_set_share", "agreement")
# latency histogram: 1 ms to about 2 minutes, each bucket 25% wider than the one before (p50/p99 within 25%)
LATENCY_EDGES_MS = tuple(round(1.25**i, 3) for i in range(53))


class CanaryPolicyError(ValueError):
    """A canary policy file that does not parse or fit the schema; the message names the key and the fix."""


class CanaryPolicy(Closed):
    """When a canary is decided, and which way (``conf/base/canary_policy.yml``)."""

    metric: Literal["feedback_accuracy", "in_set_share", "agreement"] = Field(
        "feedback_accuracy",
        description="feedback_accuracy: share of answers users marked correct (POST /v1/feedback); "
        "in_set_share: share of answers inside the closed answer set; agreement: share of a shadowed "
        "candidate's answers equal to production's (needs --shadow)",
    )
    min_requests: int = Field(200, ge=1, description="observations of the metric each version needs first")
    max_requests: int = Field(
        5000, ge=1, description="observations after which a candidate without a verdict is rolled back"
    )
    allowed_drop: float = Field(
        0.02, ge=0, lt=1, description="how far below production the candidate's metric may be (absolute)"
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="one-sided confidence of each bound")
    max_error_increase: float = Field(
        0.01,
        ge=0,
        lt=1,
        description="error rate the candidate may add to production's before it is rolled back",
    )

    @model_validator(mode="after")
    def _bounds(self) -> CanaryPolicy:
        if self.max_requests < self.min_requests:
            raise ValueError(
                f"max_requests {self.max_requests} is below min_requests {self.min_requests}: raise max_requests"
            )
        return self


class CanaryPolicyFile(Closed):
    """The policy file: a default, and per adapter the keys that differ from it."""

    default: CanaryPolicy = Field(default_factory=CanaryPolicy)
    adapters: dict[str, dict[str, Any]] = Field(default_factory=dict)


def load_canary_policy(adapter: str, path: Path | None = None) -> CanaryPolicy:
    """The policy for ``adapter``: ``path`` (or conf/base/canary_policy.yml, or the defaults when that is absent),
    its ``default`` block with the adapter's own keys over it. CanaryPolicyError names the key and the fix."""
    chosen = path or DEFAULT_CANARY_POLICY_PATH
    if not chosen.is_file():
        if path is not None:
            raise CanaryPolicyError(f"canary policy {str(path)!r} does not exist")
        return CanaryPolicy()
    try:
        raw = yaml.safe_load(chosen.read_text()) or {}
        document = CanaryPolicyFile.model_validate(raw)
        own = document.adapters.get(adapter, {})
        return CanaryPolicy.model_validate({**document.default.model_dump(), **own})
    except yaml.YAMLError as exc:
        raise CanaryPolicyError(f"canary policy {str(chosen)!r} is not YAML: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        listed = isinstance(raw, dict) and adapter in (raw.get("adapters") or {})
        prefix = f"adapters.{adapter}." if listed and not where.startswith(("default", "adapters")) else ""
        raise CanaryPolicyError(
            f"canary policy {str(chosen)!r}: {prefix}{where}: {first['msg'].removeprefix('Value error, ')}"
        ) from None


# ------------------------------------------------------------------------------------------------ figures
@dataclass
class Share:
    """``k`` of ``n`` observations were successes."""

    k: int = 0
    n: int = 0

    def add(self, success: bool) -> None:
        self.n += 1
        self.k += int(success)

    @property
    def rate(self) -> float | None:
        return self.k / self.n if self.n else None

    def __add__(self, other: Share) -> Share:
        return Share(self.k + other.k, self.n + other.n)

    def to_list(self) -> list[int]:
        return [self.k, self.n]


@dataclass
class ArmFigures:
    """Live figures of one adapter version during one canary (one replica's, or the fleet's summed)."""

    version: int
    requests: int = 0  # answered or failed (shadow: mirrored copies run)
    errors: int = 0  # failed by the version's fault (see serving.canary.ERROR_REASONS)
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES_MS) + 1))
    in_set: Share = field(default_factory=Share)
    feedback: Share = field(default_factory=Share)
    agreement: Share = field(default_factory=Share)

    def observe_latency(self, ms: float) -> None:
        index = next((i for i, edge in enumerate(LATENCY_EDGES_MS) if ms <= edge), len(LATENCY_EDGES_MS))
        self.latency[index] += 1

    def percentile(self, q: float) -> float | None:
        """The latency (ms) under which ``q`` of the answers fell: the upper edge of its histogram bucket."""
        total = sum(self.latency)
        if not total:
            return None
        seen = 0
        for index, count in enumerate(self.latency):
            seen += count
            if seen >= q * total:
                return LATENCY_EDGES_MS[min(index, len(LATENCY_EDGES_MS) - 1)]
        return LATENCY_EDGES_MS[-1]

    def signal(self, metric: str) -> Share:
        signals = {
            "feedback_accuracy": self.feedback,
            "in_set_share": self.in_set,
            "agreement": self.agreement,
        }
        return signals[metric]

    def __add__(self, other: ArmFigures) -> ArmFigures:
        return ArmFigures(
            self.version, self.requests + other.requests, self.errors + other.errors,
            [a + b for a, b in zip(self.latency, other.latency, strict=True)], self.in_set + other.in_set,
            self.feedback + other.feedback, self.agreement + other.agreement,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "requests": self.requests, "errors": self.errors,
            "p50_ms": self.percentile(0.5), "p99_ms": self.percentile(0.99), "latency_histogram": self.latency,
            "in_set": self.in_set.to_list(), "feedback": self.feedback.to_list(),
            "agreement": self.agreement.to_list(),
        }  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """The figures without the histogram (what an audit event records)."""
        data = self.to_dict()
        data.pop("latency_histogram")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArmFigures:
        latency = list(data.get("latency_histogram") or [])
        if len(latency) != len(LATENCY_EDGES_MS) + 1:
            latency = [0] * (len(LATENCY_EDGES_MS) + 1)
        return cls(
            int(data["version"]), int(data.get("requests", 0)), int(data.get("errors", 0)), latency,
            Share(*data.get("in_set", (0, 0))), Share(*data.get("feedback", (0, 0))),
            Share(*data.get("agreement", (0, 0))),
        )  # fmt: skip


# ------------------------------------------------------------------------------------------------ the test
def wilson_interval(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson's score interval of ``k`` successes out of ``n`` (two-sided ``confidence``); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, confidence: float) -> tuple[float, float, float]:
    """``p1 - p2`` and its interval by Newcombe's hybrid score method (two-sided ``confidence``)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    d = p1 - p2
    return d, d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


@dataclass(frozen=True)
class Verdict:
    """What the policy says of the figures now: ``promote``, ``rollback`` or ``continue``, and why."""

    decision: Literal["promote", "rollback", "continue"]
    reason: str
    metric: str
    candidate: float | None = None  # the candidate's metric
    baseline: float | None = None  # production's (agreement: 1)
    difference: float | None = None  # candidate - baseline
    lower: float | None = None  # one-sided bounds of the difference at the policy's confidence
    upper: float | None = None
    observations: tuple[int, int] = (0, 0)  # the metric's n for candidate, production

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision, "reason": self.reason, "metric": self.metric,
            "candidate": _round(self.candidate), "baseline": _round(self.baseline),
            "difference": _round(self.difference), "lower": _round(self.lower), "upper": _round(self.upper),
            "observations": list(self.observations),
        }  # fmt: skip


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def decide(policy: CanaryPolicy, candidate: ArmFigures, baseline: ArmFigures) -> Verdict:
    """The policy's verdict on the figures of the candidate and of production (see the module's docstring)."""
    level = 2 * policy.confidence - 1  # two-sided level whose bounds are one-sided at policy.confidence
    metric = policy.metric
    if candidate.requests and baseline.requests:
        d, low, high = newcombe_interval(
            candidate.errors, candidate.requests, baseline.errors, baseline.requests, level
        )
        if low > policy.max_error_increase:
            return Verdict(
                "rollback", f"errors: candidate {candidate.errors}/{candidate.requests} against production "
                f"{baseline.errors}/{baseline.requests}; the increase is above {policy.max_error_increase:g} with "
                f"{policy.confidence:g} confidence (lower bound {low:+.4f})", "error_rate",
                candidate.errors / candidate.requests, baseline.errors / baseline.requests, d, low, high,
                (candidate.requests, baseline.requests),
            )  # fmt: skip
    own, other = candidate.signal(metric), baseline.signal(metric)
    shadowless = metric == "agreement"
    counts = (own.n, 0 if shadowless else other.n)
    short = own.n < policy.min_requests or (not shadowless and other.n < policy.min_requests)
    if short:
        need = "the candidate" if shadowless else "each version"
        return Verdict(
            "continue", f"{metric}: {own.n} (candidate) and {other.n} (production) observations; {need} needs "
            f"{policy.min_requests}", metric, own.rate, 1.0 if shadowless else other.rate, observations=counts,
        )  # fmt: skip
    if shadowless:
        low, high = wilson_interval(own.k, own.n, level)
        rate = own.k / own.n
        d, low, high, base = rate - 1.0, low - 1.0, high - 1.0, 1.0
    else:
        d, low, high = newcombe_interval(own.k, own.n, other.k, other.n, level)
        base = other.k / other.n
    figures = (
        f"{metric}: candidate {own.k}/{own.n}, production "
        + ("1 (itself)" if shadowless else f"{other.k}/{other.n}")
        + f"; difference {d:+.4f}, one-sided {policy.confidence:g} bounds [{low:+.4f}, {high:+.4f}]"
    )
    args = (metric, own.k / own.n, base, d, low, high, counts)
    if low > -policy.allowed_drop:
        return Verdict("promote", f"{figures}: no worse than the allowed drop {policy.allowed_drop:g}", *args)
    if high < -policy.allowed_drop:
        return Verdict("rollback", f"{figures}: worse than the allowed drop {policy.allowed_drop:g}", *args)
    if own.n >= policy.max_requests:
        return Verdict("rollback", f"{figures}: no verdict after {own.n} observations (max_requests)", *args)
    return Verdict("continue", f"{figures}: not decided yet", *args)
