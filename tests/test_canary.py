"""The canary's pure parts: its policy file, the interval test on synthetic figures (both ways), sticky routing that
respects the share, and the feedback book's unknown and expired ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter_registry.canary import (
    ArmFigures,
    CanaryPolicy,
    CanaryPolicyError,
    Share,
    decide,
    load_canary_policy,
    wilson_interval,
)
from adapter_registry.serving.canary import (
    Answered,
    CanaryRoute,
    ExpiredRequest,
    FeedbackBook,
    UnknownRequest,
)

ROOT = Path(__file__).resolve().parents[1]
POLICY = CanaryPolicy(min_requests=100, allowed_drop=0.02, confidence=0.95)


def arm(version: int, feedback: tuple[int, int], requests: int | None = None, errors: int = 0) -> ArmFigures:
    return ArmFigures(version, requests or feedback[1], errors, feedback=Share(*feedback))


def test_wilson_interval_is_scipys() -> None:
    from scipy.stats import binomtest

    for k, n in [(0, 10), (7, 10), (95, 100), (400, 400), (1, 3000)]:
        ours = wilson_interval(k, n, 0.9)
        theirs = binomtest(k, n).proportion_ci(confidence_level=0.9, method="wilson")
        assert ours == pytest.approx((theirs.low, theirs.high), abs=1e-9)


def test_the_policy_promotes_a_candidate_no_worse_and_rolls_back_a_worse_one() -> None:
    same = decide(POLICY, arm(2, (950, 1000)), arm(1, (950, 1000)))
    assert same.decision == "promote" and -0.02 < same.lower < 0 < same.upper  # type: ignore[operator]
    worse = decide(POLICY, arm(2, (210, 300)), arm(1, (285, 300)))
    assert worse.decision == "rollback" and worse.upper < -0.02  # type: ignore[operator]
    assert "worse than the allowed drop" in worse.reason
    early = decide(POLICY, arm(2, (10, 10)), arm(1, (9, 90)))
    assert early.decision == "continue" and "needs 100" in early.reason
    close = decide(POLICY, arm(2, (180, 200)), arm(1, (186, 200)))
    assert close.decision == "continue" and close.lower < -0.02 < close.upper  # type: ignore[operator]
    capped = CanaryPolicy(min_requests=100, max_requests=200)
    assert decide(capped, arm(2, (180, 200)), arm(1, (186, 200))).decision == "rollback"


def test_errors_roll_back_at_once_before_min_requests() -> None:
    failing = decide(POLICY, arm(2, (3, 3), requests=20, errors=6), arm(1, (30, 30), requests=400, errors=1))
    assert failing.decision == "rollback" and failing.metric == "error_rate"
    one_error = decide(
        POLICY, arm(2, (3, 3), requests=20, errors=1), arm(1, (30, 30), requests=400, errors=1)
    )
    assert one_error.decision == "continue"  # one error in 20 is no evidence yet


def test_agreement_is_tested_against_production_agreeing_with_itself() -> None:
    policy = CanaryPolicy(metric="agreement", min_requests=100, allowed_drop=0.05)
    agreeing = ArmFigures(2, 500, agreement=Share(497, 500))
    assert decide(policy, agreeing, ArmFigures(1, 5000)).decision == "promote"
    drifting = ArmFigures(2, 500, agreement=Share(400, 500))
    assert decide(policy, drifting, ArmFigures(1, 5000)).decision == "rollback"


def test_the_policy_file_is_closed_and_per_adapter(tmp_path: Path) -> None:
    shipped = load_canary_policy("anything", ROOT / "conf/base/canary_policy.yml")
    assert shipped == CanaryPolicy()  # the file documents the defaults
    path = tmp_path / "canary.yml"
    path.write_text("default:\n  min_requests: 50\nadapters:\n  acme:\n    metric: in_set_share\n")
    assert load_canary_policy("acme", path).model_dump() == {
        **CanaryPolicy().model_dump(), "min_requests": 50, "metric": "in_set_share"
    }  # fmt: skip
    assert load_canary_policy("globex", path).metric == "feedback_accuracy"
    path.write_text("default:\n  min_request: 50\n")
    with pytest.raises(CanaryPolicyError, match=r"default\.min_request: Extra inputs are not permitted"):
        load_canary_policy("acme", path)
    path.write_text("adapters:\n  acme:\n    max_requests: 10\n")
    with pytest.raises(
        CanaryPolicyError, match=r"max_requests 10 is below min_requests 200: raise max_requests"
    ):
        load_canary_policy("acme", path)
    path.write_text("adapters:\n  acme:\n    min_requests: true\n")
    with pytest.raises(CanaryPolicyError, match=r"adapters\.acme\.min_requests: .*not a boolean"):
        load_canary_policy("acme", path)


def test_routing_is_sticky_and_takes_its_share() -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    for percent in (10, 50):
        route = CanaryRoute("acme", 2, 1, percent, False, canary_id=7)
        taken = [k for k in keys if route.takes(k)]
        assert abs(len(taken) / len(keys) - percent / 100) < 0.015
        assert all(route.takes(k) for k in taken[:200])  # the same key, the same side
    other = CanaryRoute("acme", 2, 1, 10, False, canary_id=8)  # the next canary draws anew
    first = CanaryRoute("acme", 2, 1, 10, False, canary_id=7)
    assert {k for k in keys if other.takes(k)} != {k for k in keys if first.takes(k)}


def test_feedback_book_tells_unknown_from_expired() -> None:
    now = [0.0]
    book = FeedbackBook(ttl=60, clock=lambda: now[0])
    book.add("r1", Answered("acme", 1, "billing"))
    assert book.find("r1").key == "billing"
    now[0] = 61
    with pytest.raises(ExpiredRequest):
        book.find("r1")
    with pytest.raises(UnknownRequest):
        book.find("never-answered")
