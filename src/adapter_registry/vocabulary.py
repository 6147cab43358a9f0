"""The words every room shares: metric names, split names and the default answer separator, each spelled once.

Ground floor, like ``recipes/``: it imports nothing of ours (and nothing heavy), so the recipe schema, the data
checks, evaluation, the registry's entities and the DVC stages all take these from here. Each tuple is read from
its ``Literal`` type, so the type the schema checks with and the tuple the code loops over cannot drift apart.
"""

from __future__ import annotations

from typing import Literal, get_args

Metric = Literal["accuracy", "macro_f1", "exact_match", "loss"]
METRICS: tuple[Metric, ...] = get_args(
    Metric
)  # a recipe's evaluation.metrics; ar.metric.<name> in the registry

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = get_args(Split)  # a recipe's data files, in this order; ar.data.<split>.* tags

ANSWER_SEPARATOR = " | "  # default task.answer_field_separator: an SFT answer is "<category> | <reply>"
