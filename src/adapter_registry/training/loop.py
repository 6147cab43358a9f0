"""One readable training loop: length-grouped batches, AdamW with warm-up, validation-loss early stopping with
the best state restored, an overfitting flag, and resumable checkpoints.

It knows nothing of MLflow or Kedro: it returns the loss history, and tells a ``Progress`` (if given) each step's
loss and each validation loss as they come; the caller decides where they go (``training.progress`` prints them,
the pipeline also streams them to its MLflow run). How one optimiser step is made and where the trainable state
lives is a :class:`Stepper`: this process alone (:class:`OneProcess`, the default) or several
(``training.sharding.ShardedStepper``).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from adapter_registry.training.features import Feature, batch_stream, collate, sorted_batches

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class LoopConfig:
    max_steps: int
    batch_size: int
    learning_rate: float
    head_learning_rate: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    lr_schedule: str = "linear"
    max_grad_norm: float = 1.0
    eval_every: int = 50
    early_stopping_patience: int | None = 3
    checkpoint_every: int = 50
    seed: int = 0


@dataclass
class TrainResult:
    steps: int
    train_loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) every step
    val_loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) every eval_every steps
    best_step: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    overfitting: bool = False
    tokens: int = 0
    wall_s: float = 0.0
    resumed_from: int = 0
    # refit: the steps of the second run on train + validation (curves above are the selecting run's)
    refit_steps: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("train_loss")
        data.pop("val_loss")
        data["tokens_per_s"] = round(self.tokens_per_s, 2)
        data["final_train_loss"] = self.train_loss[-1][1] if self.train_loss else None
        return data


class Progress(Protocol):
    """What the loop tells as it trains (``training.progress.ProgressLine``, the pipeline's MLflow logger)."""

    def started(self, total: int, phase: str, done: TrainResult) -> None:
        """Training of ``phase`` ("train", or "refit") begins: ``total`` steps, ``done`` what a checkpoint restored."""

    def stepped(self, step: int, loss: float) -> None:
        """One optimiser step ended with this training loss."""

    def validated(self, step: int, loss: float) -> None:
        """The validation loss after ``step``."""

    def finished(self, result: TrainResult) -> None:
        """The loop ended (last step, or early stopping)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(config: LoopConfig) -> Callable[[int], float]:
    warmup = int(config.max_steps * config.warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.lr_schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, config.max_steps - warmup)
        if config.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return max(0.0, 1 - progress)

    return factor


LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def model_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own loss (its forward with labels)."""
    return model(**batch).loss


@torch.no_grad()
def mean_loss(
    model: nn.Module,
    features: Sequence[Feature],
    batch_size: int,
    pad_id: int,
    loss_fn: LossFn | None = None,
) -> float:
    """Mean loss over ``features`` (token-weighted for causal LMs, row-weighted for classification)."""
    model.eval()
    loss_fn = loss_fn or model_loss
    total, weight = 0.0, 0
    for rows, batch in sorted_batches(features, batch_size, pad_id):
        loss = loss_fn(model, batch)
        labels = batch["labels"]
        n = int((labels[:, 1:] != -100).sum()) if labels.dim() == 2 else len(rows)
        total += float(loss) * n
        weight += n
    return total / max(weight, 1)


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class Stepper(Protocol):
    """How the loop makes one optimiser step, measures a validation loss and reads or restores its state."""

    is_main: bool  # the process that writes checkpoints

    def step(
        self,
        model: nn.Module,
        rows: Sequence[Feature],
        pad_id: int,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        max_grad_norm: float,
    ) -> tuple[float, int]:
        """Gradients of the mean loss over ``rows`` (the step's whole batch), clipped, then ``optimizer.step()``;
        returns the batch's mean loss and its tokens."""
        ...

    def mean_loss(
        self, model: nn.Module, features: Sequence[Feature], batch_size: int, pad_id: int, loss_fn: LossFn
    ) -> float: ...

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]: ...

    def load_trainable_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None: ...

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's state and the random generators', as a checkpoint keeps them."""
        ...

    def resume(self, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
        """Restore what ``optimizer_state`` kept."""
        ...


class OneProcess:
    """The loop's steps in this process alone."""

    is_main = True

    def step(
        self,
        model: nn.Module,
        rows: Sequence[Feature],
        pad_id: int,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        max_grad_norm: float,
    ) -> tuple[float, int]:
        batch = collate(rows, pad_id)
        loss = loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]], max_grad_norm
        )
        optimizer.step()
        return loss.item(), int(batch["attention_mask"].sum())

    def mean_loss(
        self, model: nn.Module, features: Sequence[Feature], batch_size: int, pad_id: int, loss_fn: LossFn
    ) -> float:
        return mean_loss(model, features, batch_size, pad_id, loss_fn)

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return _trainable_state(model)

    def load_trainable_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(state, strict=False)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}

    def resume(self, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a killed run leaves the previous checkpoint intact


def train(
    model: nn.Module,
    train_features: Sequence[Feature],
    val_features: Sequence[Feature],
    config: LoopConfig,
    pad_id: int,
    *,
    head_parameters: Sequence[nn.Parameter] = (),
    optimizer: torch.optim.Optimizer | None = None,
    on_step: Callable[[int], None] | None = None,
    checkpoint_dir: Path | None = None,
    run_key: str = "",
    loss_fn: LossFn | None = None,
    progress: Progress | None = None,
    phase: str = "train",
    stepper: Stepper | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters; the best validation state is restored at the end.

    ``head_parameters`` train at ``head_learning_rate``. ``on_step(step)`` runs after each optimiser step
    (AdaLoRA's rank allocation). With ``checkpoint_dir``, a checkpoint is written every ``checkpoint_every``
    steps and an interrupted run with the same ``run_key`` resumes from it. ``loss_fn(model, batch)`` replaces
    the model's own loss (``models.answer_only_loss_fn``). ``progress`` hears of every step and validation
    (``phase`` names the run to it: "train", or "refit" for a classifier's second run). ``stepper``: how a step
    is made (default: this process alone; ``training.sharding.ShardedStepper`` shares each batch among processes).
    """
    loss_fn = loss_fn or model_loss
    stepper = stepper or OneProcess()
    seed_everything(config.seed)
    head_ids = {id(p) for p in head_parameters}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    if optimizer is None:
        groups: list[dict[str, Any]] = [{"params": body, "lr": config.learning_rate}]
        if head_parameters:
            groups.append(
                {"params": list(head_parameters), "lr": config.head_learning_rate or config.learning_rate}
            )
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    result = TrainResult(steps=0)
    best_state = stepper.trainable_state(model)
    start = 0
    checkpoint = checkpoint_dir / CHECKPOINT if checkpoint_dir else None
    if checkpoint and checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        if saved.get("run_key") == run_key:
            stepper.load_trainable_state(model, saved["trainable"])
            stepper.resume(optimizer, saved)
            scheduler.load_state_dict(saved["scheduler"])
            result = saved["result"]
            best_state = saved["best_state"]
            start = result.resumed_from = result.steps
    lengths = [len(f["input_ids"]) for f in train_features]
    stream = itertools.islice(batch_stream(lengths, config.batch_size, config.seed), start, None)
    checks_without_gain = 0
    began = time.perf_counter() - result.wall_s
    if progress is not None:
        progress.started(config.max_steps, phase, result)
    model.train()
    for step in range(start + 1, config.max_steps + 1):
        rows = [train_features[i] for i in next(stream)]
        loss, tokens = stepper.step(model, rows, pad_id, loss_fn, optimizer, config.max_grad_norm)
        if on_step is not None:
            on_step(step)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.steps = step
        result.tokens += tokens
        result.train_loss.append((step, loss))
        if progress is not None:
            progress.stepped(step, loss)
        if val_features and (step % config.eval_every == 0 or step == config.max_steps):
            val = stepper.mean_loss(model, val_features, config.batch_size * 2, pad_id, loss_fn)
            model.train()
            result.val_loss.append((step, val))
            if progress is not None:
                progress.validated(step, val)
            if val < result.best_val_loss:
                result.best_val_loss, result.best_step = val, step
                best_state = stepper.trainable_state(model)
                checks_without_gain = 0
            else:
                checks_without_gain += 1
            patience = config.early_stopping_patience
            if patience is not None and checks_without_gain >= patience:
                result.stopped_early = True
                break
        if checkpoint and step % config.checkpoint_every == 0 and step < config.max_steps:
            result.wall_s = time.perf_counter() - began
            state = {"trainable": stepper.trainable_state(model), **stepper.optimizer_state(optimizer)}
            if stepper.is_main:
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                _save_checkpoint(
                    checkpoint,
                    {
                        "run_key": run_key,
                        **state,
                        "scheduler": scheduler.state_dict(),
                        "result": result,
                        "best_state": best_state,
                    },
                )
    result.wall_s = time.perf_counter() - began
    result.overfitting = is_overfitting(result)
    if progress is not None:
        progress.finished(result)
    if result.val_loss:
        stepper.load_trainable_state(model, best_state)
    if not result.val_loss:
        result.best_step = result.steps
    if checkpoint and checkpoint.is_file() and stepper.is_main:
        checkpoint.unlink()  # finished: the next run starts fresh
    model.eval()
    return result


def is_overfitting(result: TrainResult) -> bool:
    """Validation loss rose after its best while the training loss kept falling."""
    if len(result.val_loss) < 3 or result.best_step == result.val_loss[-1][0]:
        return False
    last_val = result.val_loss[-1][1]
    losses = [loss for step, loss in result.train_loss if step > result.best_step]
    before = [loss for step, loss in result.train_loss if step <= result.best_step][-len(losses) :]
    if not losses or not before:
        return False
    return last_val > result.best_val_loss * 1.02 and float(np.mean(losses)) < float(np.mean(before))
