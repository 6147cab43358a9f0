"""Metrics with bootstrap intervals, and the interval gate that decides "beats its baseline"."""

from __future__ import annotations

import numpy as np
import pytest

from adapter_registry.evaluation.metrics import (
    HIGHER_IS_BETTER,
    accuracy,
    beats,
    bootstrap_interval,
    macro_f1,
    per_class_f1,
)
from adapter_registry.vocabulary import METRICS


def hits(n: int, correct: int) -> tuple[np.ndarray, np.ndarray]:
    """Gold labels and predictions with exactly ``correct`` of ``n`` right."""
    y = np.zeros(n, dtype=int)
    pred = np.concatenate([np.zeros(correct, dtype=int), np.ones(n - correct, dtype=int)])
    return y, pred


def test_bootstrap_interval_brackets_the_score_and_narrows_with_more_rows() -> None:
    small = bootstrap_interval(accuracy, *hits(100, 90))
    large = bootstrap_interval(accuracy, *hits(2000, 1800))
    for low, high in (small, large):
        assert low < 0.9 < high
    assert large[1] - large[0] < (small[1] - small[0]) / 3  # ~1/sqrt(20) as wide
    # binomial standard error at n=100: 0.03, so the 95% interval spans about +-0.06
    assert small == pytest.approx((0.84, 0.95), abs=0.015)
    assert bootstrap_interval(accuracy, *hits(100, 90)) == small  # seeded: the same rows resampled


def test_bootstrap_interval_without_samples_is_the_point_score() -> None:
    assert bootstrap_interval(accuracy, *hits(10, 7), samples=0) == (0.7, 0.7)
    assert bootstrap_interval(accuracy, np.array([]), np.array([])) == (0.0, 0.0)


def test_beats_needs_the_whole_interval_on_the_better_side() -> None:
    assert beats(0.91, 0.95, 0.90, higher_is_better=True)
    assert not beats(0.89, 0.95, 0.90, higher_is_better=True)  # higher on average, not significantly
    assert beats(0.20, 0.29, 0.30, higher_is_better=False)  # a loss: the interval must lie below
    assert not beats(0.20, 0.31, 0.30, higher_is_better=False)


def test_a_small_lead_on_few_rows_does_not_beat_the_baseline() -> None:
    """92% vs a 90% baseline on 100 rows is inside the noise; on 3,000 rows it is not."""
    for n, expected in ((100, False), (3000, True)):
        low, high = bootstrap_interval(accuracy, *hits(n, int(0.92 * n)))
        assert beats(low, high, 0.90, higher_is_better=True) is expected


def test_macro_and_per_class_f1() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 2, 2, 2])
    assert per_class_f1(y, pred, ["a", "b", "c"]) == {"a": 1.0, "b": 0.6667, "c": 0.8}
    assert macro_f1(y, pred) == pytest.approx((1 + 2 / 3 + 0.8) / 3)


def test_every_metric_has_a_direction() -> None:
    assert list(HIGHER_IS_BETTER) == list(METRICS) and [
        m for m, up in HIGHER_IS_BETTER.items() if not up
    ] == ["loss"]
