"""Metrics with bootstrap 95% intervals. Pure functions of numpy arrays."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from adapter_registry.vocabulary import METRICS


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(y == pred)) if len(y) else 0.0


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean F1 over the classes present in ``y`` (sklearn's macro average over true labels)."""
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, labels=np.unique(y), average="macro", zero_division=0)) if len(y) else 0.0


def per_class_f1(y: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict[str, float]:
    from sklearn.metrics import f1_score

    scores = f1_score(y, pred, labels=list(range(len(labels))), average=None, zero_division=0)
    return {label: round(float(s), 4) for label, s in zip(labels, scores, strict=True)}


def bootstrap_interval(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y: np.ndarray,
    pred: np.ndarray,
    samples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """95% percentile interval of ``metric`` over rows resampled with replacement."""
    if samples == 0 or len(y) == 0:
        value = metric(y, pred)
        return value, value
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(samples, len(y)))
    values = np.array([metric(y[i], pred[i]) for i in idx])
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def beats(adapter_low: float, adapter_high: float, base_value: float, higher_is_better: bool) -> bool:
    """The adapter beats the base when its whole 95% interval lies on the better side of the base's score."""
    return adapter_low > base_value if higher_is_better else adapter_high < base_value


# every metric but the loss is better when higher
HIGHER_IS_BETTER: dict[str, bool] = {name: name != "loss" for name in METRICS}
