"""Train: one readable loop over the recipe's examples (resumable from checkpoints), its progress shown and logged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from adapter_registry.bases.resolve import ResolvedBase
from adapter_registry.recipes import Recipe, recipe_hash
from adapter_registry.training.adapter import TrainedAdapter, train_adapter
from adapter_registry.training.progress import Progresses, ProgressLine
from adapter_registry.training.threads import use_threads

log = logging.getLogger(__name__)


def train_adapter_node(
    recipe: Recipe, base: ResolvedBase, examples: dict[str, list[Any]], checkpoint_root: str
) -> tuple[TrainedAdapter, TrainedAdapter]:
    """Train the adapter; returned twice: in memory for the next nodes, and to the adapter-folder dataset.

    Torch gets the threads the machine can give now (``training.threads``: fewer when other work holds cores;
    ``ADAPTER_REGISTRY_THREADS=N`` overrides), logged.
    Each step's loss and each validation loss go to stderr (a live bar, or a line every 10 s in a log) and to the
    recipe's MLflow run as they come (``MlflowLossLogger``, when the hooks have one open).
    With ``training.distributed.strategy: ddp | fsdp`` the training runs in torchrun workers started from here
    (``training.distributed``; their torch threads are this node's, shared out), rank 0 relaying the progress; a
    failed worker raises ``DistributedTrainingError`` naming the rank and the checkpoint to resume from.
    """
    from adapter_registry.pipelines.hooks import MlflowLossLogger

    threads = use_threads()
    log.info("%s: training with %s", recipe.name, threads)
    trained = train_adapter(
        recipe,
        base,
        examples["train"],
        examples["validation"],
        checkpoint_dir=Path(checkpoint_root) / recipe.name / "checkpoints",
        run_key=recipe_hash(recipe),
        progress=Progresses(ProgressLine(recipe.name), MlflowLossLogger.for_active_run()),
    )
    return trained, trained
