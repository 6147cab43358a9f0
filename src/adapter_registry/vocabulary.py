"""The words every room shares: metric names, split names, the default answer separator and the grammar of a
promotion gate, each spelled once.

Ground floor, like ``recipes/``: it imports nothing of ours (and nothing heavy), so the recipe schema, the data
checks, evaluation, the registry's entities and the DVC stages all take these from here. Each tuple is read from
its ``Literal`` type, so the type the schema checks with and the tuple the code loops over cannot drift apart.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Literal, get_args

Metric = Literal["accuracy", "macro_f1", "exact_match", "loss"]
METRICS: tuple[Metric, ...] = get_args(
    Metric
)  # a recipe's evaluation.metrics; ar.metric.<name> in the registry

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = get_args(Split)  # a recipe's data files, in this order; ar.data.<split>.* tags

ANSWER_SEPARATOR = " | "  # default task.answer_field_separator: an SFT answer is "<category> | <reply>"

GATE_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq,
}  # fmt: skip
_GATE = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(>=|<=|>|<|==)\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?)\s*$")


def parse_gate(text: str) -> tuple[str, str, float]:
    """``"accuracy >= 0.8"`` -> ``("accuracy", ">=", 0.8)``: the grammar of a promotion gate, read by the recipe
    schema (``recipes.schema.Gate``) and by the registry (``registry.lineage.Gate``, which must not import the
    schema); ValueError naming the problem and an example."""
    match = _GATE.match(text)
    if not match:
        raise ValueError(f"gate {text!r} is not 'METRIC OP NUMBER', for example 'accuracy >= 0.8'")
    metric, op, threshold = match.groups()
    if metric not in METRICS:
        raise ValueError(f"gate {text!r} names unknown metric {metric!r}; known: {', '.join(METRICS)}")
    return metric, op, float(threshold)
