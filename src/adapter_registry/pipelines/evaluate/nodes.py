"""Evaluate: adapter vs base on the test split, touched once, with intervals, figures and a forgetting probe."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from adapter_registry.evaluation.evaluate import evaluate_adapter
from adapter_registry.evaluation.report import dvc_metrics, figures, learning_curve, report_dict
from adapter_registry.recipes import Recipe
from adapter_registry.training.adapter import TrainedAdapter
from adapter_registry.vocabulary import ANSWER_SEPARATOR


def evaluate_adapter_node(
    recipe: Recipe, trained: TrainedAdapter, examples: dict[str, list[Any]]
) -> tuple[dict[str, Any], dict[str, Figure], list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """The evaluation report (JSON), its pictures (learning curves; confusion matrix for classifiers), every
    scored test row's answer (``predictions.json``: what ``serve`` must answer for the same request), and what DVC
    shows: the metrics (``dvc metrics show``) and the learning curve (``dvc plots show``)."""
    separator = getattr(recipe.task, "answer_field_separator", ANSWER_SEPARATOR)
    report = evaluate_adapter(trained, examples["test"], recipe.evaluation, recipe.max_length, separator)
    data = report_dict(recipe, trained, report)
    return data, figures(trained, report), report.outputs, dvc_metrics(data), learning_curve(trained.result)
