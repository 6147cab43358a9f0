"""Recipe + base + examples → a trained adapter (the whole of the train node's work).

Causal LM: LoRA/QLoRA on the (optionally 4-bit) base, loss on answer tokens only. Classification: LP-FT — a
linear probe fitted on frozen pooled features initialises the head, then the adapter and the head train
together, the head at its own learning rate.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import get_peft_model, prepare_model_for_kbit_training
from torch import nn

from adapter_registry.bases.resolve import ResolvedBase
from adapter_registry.contract import ServingContract
from adapter_registry.methods import build_peft_config, optimizer_for, step_callback
from adapter_registry.methods.quantization import quantization_config
from adapter_registry.recipes.schema import Recipe, TrainingSpec
from adapter_registry.training.distributed import check_launch, run_in_workers
from adapter_registry.training.features import classification_features, sft_features, sorted_batches
from adapter_registry.training.heads import (
    LinearProbe,
    NeighbourVote,
    PooledClassifier,
    detect_pooling,
    fit_linear_probe,
    fit_neighbour_vote,
    pool,
    refit_linear_probe,
)
from adapter_registry.training.loop import (
    LoopConfig,
    Progress,
    Stepper,
    TrainResult,
    model_loss,
    seed_everything,
    train,
)
from adapter_registry.training.models import (
    answer_only_loss_fn,
    load_adapter,
    load_base_model,
    load_tokenizer,
    trainable_parameters,
)
from adapter_registry.training.sharding import in_process_stepper

MIN_EXAMPLES = 500
MIN_PER_CLASS = 10

logger = logging.getLogger(__name__)


@dataclass
class TrainedAdapter:
    """A trained adapter in memory, with what evaluation, merge and registration need to know."""

    model: nn.Module
    tokenizer: Any
    task: str
    base: ResolvedBase
    result: TrainResult
    trainable_params: int
    total_params: int
    labels: list[str] = field(default_factory=list)
    contract: ServingContract | None = (
        None  # how requests are rendered and decoded (serving.json), set by train
    )
    probe: LinearProbe | None = None
    # classification: validation log-loss of the head alone ("head") and of each neighbour-vote candidate
    neighbour_scores: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # a composed adapter's parents: [{"version": "NAME/VERSION", "weight": w}]; empty for a trained one
    parents: list[dict[str, Any]] = field(default_factory=list)

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / max(self.total_params, 1)


def training_of(recipe: Recipe) -> TrainingSpec:
    """The recipe's training block; a composed recipe (``compose:``) has none and is not trained."""
    if recipe.training is None:
        raise ValueError(f"recipe {recipe.name!r} composes registered adapters (compose:); it is not trained")
    return recipe.training


def total_steps(recipe: Recipe, n_train: int) -> int:
    t = training_of(recipe)
    if t.max_steps is not None:
        return t.max_steps
    assert t.epochs is not None
    return max(1, math.ceil(t.epochs * n_train / t.batch_size))


def loop_config(recipe: Recipe, steps: int) -> LoopConfig:
    t = training_of(recipe)
    return LoopConfig(
        max_steps=steps,
        batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        head_learning_rate=t.head_learning_rate or 4 * t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_ratio=t.warmup_ratio,
        lr_schedule=t.lr_schedule,
        max_grad_norm=t.max_grad_norm,
        eval_every=t.eval_every,
        early_stopping_patience=t.early_stopping_patience,
        checkpoint_every=t.checkpoint_every,
        seed=t.seed,
    )


def size_warnings(n_train: int, labels: Sequence[str] = ()) -> list[str]:
    """Warnings recorded on the version when a recipe trains on too little data."""
    warnings = []
    if n_train < MIN_EXAMPLES:
        warnings.append(f"trained on {n_train} examples (< {MIN_EXAMPLES}): scores may not generalise")
    if labels:
        rare = sorted(label for label, n in Counter(labels).items() if n < MIN_PER_CLASS)
        if rare:
            warnings.append(
                f"{len(rare)} classes have fewer than {MIN_PER_CLASS} training examples: {rare[:5]}"
            )
    return warnings


def budget_warnings(recipe: Recipe, n_train: int) -> list[str]:
    """A warning when training ends before one epoch (``max_steps`` or ``epochs`` < 1): some rows are never seen."""
    t = training_of(recipe)
    rows = total_steps(recipe, n_train) * t.batch_size
    if rows >= n_train:
        return []
    setting = f"epochs={t.epochs:g}" if t.max_steps is None else f"max_steps={t.max_steps}"
    return [
        f"training.{setting} at batch_size={t.batch_size} covers {rows} of the {n_train} training rows "
        f"({rows / n_train:.0%} of one epoch): the rest are never trained on. Fix: max_steps >= "
        f"{math.ceil(n_train / t.batch_size)}, or epochs >= 1"
    ]


@torch.no_grad()
def pooled_features(
    model: PooledClassifier | nn.Module,
    features: Sequence[dict],
    pad_id: int,
    pooling: Any = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Pooled sentence features of every row, in order (the encoder as it is now)."""
    out = np.zeros((len(features), 0), dtype=np.float32)
    for rows, batch in sorted_batches(features, batch_size, pad_id):
        if isinstance(model, PooledClassifier):
            feats = model.features(batch["input_ids"], batch["attention_mask"])
        else:
            enc = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            feats = pool(
                enc.last_hidden_state, batch["attention_mask"], getattr(enc, "pooler_output", None), pooling
            )
        if out.shape[1] == 0:
            out = np.zeros((len(features), feats.shape[1]), dtype=np.float32)
        out[rows] = feats.numpy()
    return out


def _train_with_method(
    recipe: Recipe,
    model: nn.Module,
    peft_model: Any,
    train_feats: Sequence[dict],
    val_feats: Sequence[dict],
    steps: int,
    pad_id: int,
    checkpoint_dir: Path | None,
    run_key: str,
    head: Sequence[nn.Parameter] = (),
    loss_fn: Any = None,
    progress: Progress | None = None,
    phase: str = "train",
    stepper: Stepper | None = None,
) -> TrainResult:
    """The loop with what the method asks of it: its optimizer (LoRA-FA) and its per-step hook (AdaLoRA);
    ``stepper``: how each step is made (``training.sharding``; default: this process alone)."""
    config = loop_config(recipe, steps)
    optimizer = optimizer_for(
        recipe.method, peft_model, config.learning_rate, config.weight_decay,
        head_parameters=head, head_lr=config.head_learning_rate if head else None,
    )  # fmt: skip
    return train(
        model, train_feats, val_feats, config, pad_id, head_parameters=head, optimizer=optimizer,
        on_step=step_callback(recipe.method, peft_model), checkpoint_dir=checkpoint_dir, run_key=run_key,
        loss_fn=loss_fn, progress=progress, phase=phase, stepper=stepper,
    )  # fmt: skip


def causal_lm_model(recipe: Recipe, base: ResolvedBase, steps: int) -> Any:
    """The recipe's untrained PeftModel on its (optionally quantised) base, initialised from the recipe's seed: the
    same in every process of a distributed run as in one."""
    quant = quantization_config(recipe.method)
    model = load_base_model(base.path, recipe.task.type, quant)
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    seed_everything(training_of(recipe).seed)
    return get_peft_model(model, build_peft_config(recipe.method, recipe.task.type, total_steps=steps))


def train_causal_lm(
    recipe: Recipe,
    base: ResolvedBase,
    train_examples: Sequence[Any],
    val_examples: Sequence[Any],
    checkpoint_dir: Path | None,
    run_key: str,
    progress: Progress | None = None,
) -> TrainedAdapter:
    tokenizer = load_tokenizer(base.path)
    max_length = training_of(recipe).max_length
    train_feats = sft_features(train_examples, tokenizer, max_length)
    val_feats = sft_features(val_examples, tokenizer, max_length)
    steps = total_steps(recipe, len(train_feats))
    model = causal_lm_model(recipe, base, steps)
    loss_fn = answer_only_loss_fn(model)
    stepper = in_process_stepper(training_of(recipe).distributed, model, loss_fn or model_loss)
    result = _train_with_method(
        recipe, model, model, train_feats, val_feats, steps, tokenizer.pad_token_id, checkpoint_dir, run_key,
        loss_fn=loss_fn, progress=progress, stepper=stepper,
    )  # fmt: skip
    trainable, total = trainable_parameters(model)
    answers = answer_labels(recipe, train_examples)
    return TrainedAdapter(
        model,
        tokenizer,
        recipe.task.type,
        base,
        result,
        trainable,
        total,
        labels=answers,
    )


def train_causal_lm_distributed(
    recipe: Recipe,
    base: ResolvedBase,
    train_examples: Sequence[Any],
    val_examples: Sequence[Any],
    checkpoint_dir: Path | None,
    run_key: str,
    progress: Progress | None = None,
) -> TrainedAdapter:
    """``train_causal_lm`` in ``training.distributed.processes`` torchrun workers (``training.distributed``): the
    adapter folder rank 0 wrote, loaded onto the base in this process."""
    with run_in_workers(recipe, base, train_examples, val_examples, checkpoint_dir, run_key, progress) as (
        folder,
        out,
    ):
        model = load_adapter(base.path, folder, recipe.task.type, quantization_config(recipe.method))
    return TrainedAdapter(
        model,
        load_tokenizer(base.path),
        recipe.task.type,
        base,
        out["result"],
        out["trainable_params"],
        out["total_params"],
        labels=answer_labels(recipe, train_examples),
    )


def answer_labels(recipe: Recipe, examples: Sequence[Any]) -> list[str]:
    """The closed answer set constrained decoding chooses from: each training answer's text before the separator."""
    if recipe.evaluation.decoding != "constrained" or recipe.task.type != "causal_lm_sft":
        return []
    separator = recipe.task.answer_field_separator.strip()  # split as evaluation.answer_key splits
    keys = {(e.answer.split(separator, 1)[0] if separator else e.answer).strip() for e in examples}
    return sorted(k for k in keys if k)


def train_classifier(
    recipe: Recipe,
    base: ResolvedBase,
    train_examples: Sequence[Any],
    val_examples: Sequence[Any],
    checkpoint_dir: Path | None,
    run_key: str,
    progress: Progress | None = None,
) -> TrainedAdapter:
    task = recipe.task
    assert task.type == "sequence_classification"
    tokenizer = load_tokenizer(base.path)
    labels = sorted({e.label for e in train_examples})
    index = {label: i for i, label in enumerate(labels)}
    unseen = sorted({e.label for e in val_examples} - set(index))
    if unseen:
        raise ValueError(f"validation labels never seen in training: {unseen[:5]}")
    max_length = training_of(recipe).max_length
    train_feats = classification_features(
        [e.text for e in train_examples], [index[e.label] for e in train_examples], tokenizer, max_length
    )
    val_feats = classification_features(
        [e.text for e in val_examples], [index[e.label] for e in val_examples], tokenizer, max_length
    )
    pooling = detect_pooling(base.path, task.pooling)
    encoder = load_base_model(base.path, task.type)
    pad = tokenizer.pad_token_id
    train_x, val_x = (
        pooled_features(encoder, train_feats, pad, pooling),
        pooled_features(encoder, val_feats, pad, pooling),
    )
    train_y, val_y = np.array([f["label"] for f in train_feats]), np.array([f["label"] for f in val_feats])
    probe = fit_linear_probe(train_x, train_y, val_x, val_y, len(labels))

    def fit(
        encoder: nn.Module,
        head: LinearProbe,
        feats: Sequence[dict],
        val: Sequence[dict],
        steps: int,
        folder: Path | None,
        key: str,
        phase: str = "train",
    ) -> tuple[PooledClassifier, TrainResult]:
        seed_everything(training_of(recipe).seed)
        peft_encoder = get_peft_model(encoder, build_peft_config(recipe.method, task.type, total_steps=steps))
        model = PooledClassifier(peft_encoder, len(labels), pooling, labels)
        if task.head_init == "linear_probe":
            with torch.no_grad():
                model.head.weight.copy_(torch.from_numpy(head.weight))
                model.head.bias.copy_(torch.from_numpy(head.bias))
        result = _train_with_method(
            recipe, model, peft_encoder, feats, val, steps, pad, folder, key,
            head=list(model.head.parameters()), progress=progress, phase=phase,
        )  # fmt: skip
        return model, result

    steps = total_steps(recipe, len(train_feats))
    model, result = fit(encoder, probe, train_feats, val_feats, steps, checkpoint_dir, run_key)
    vote: NeighbourVote | None = None
    vote_scores: dict[str, float] = {}
    if task.neighbours and val_feats:  # chosen with this model, before a refit sees the validation rows
        adapted_train, adapted_val = (pooled_features(model, f, pad) for f in (train_feats, val_feats))
        with torch.no_grad():
            val_logits = model.head(torch.from_numpy(adapted_val)).numpy()
        vote, vote_scores = fit_neighbour_vote(adapted_train, train_y, adapted_val, val_y, val_logits)
    refitting = bool(training_of(recipe).refit and val_feats)
    if refitting:
        # as many epochs as the selected step reached, on train + validation, from a probe fitted on both
        every = train_feats + val_feats
        refit_steps = max(1, math.ceil(result.best_step * len(every) / len(train_feats)))
        probe = refit_linear_probe(
            probe, train_x, train_y, val_x, val_y, len(labels)
        )  # same rows as the adapter
        encoder = load_base_model(base.path, task.type)
        folder = checkpoint_dir / "refit" if checkpoint_dir else None
        model, refit = fit(encoder, probe, every, [], refit_steps, folder, f"{run_key}:refit", "refit")
        result.refit_steps, result.tokens, result.wall_s = (
            refit.steps,
            result.tokens + refit.tokens,
            result.wall_s + refit.wall_s,
        )
    if vote is not None:  # the chosen vote, over every labelled row as the final encoder sees them
        keys = (
            pooled_features(model, train_feats + val_feats, pad)
            if refitting
            else np.concatenate([adapted_train, adapted_val])
        )
        model.neighbours = vote.over(keys, np.concatenate([train_y, val_y]))
    trainable, total = trainable_parameters(model)
    return TrainedAdapter(
        model,
        tokenizer,
        task.type,
        base,
        result,
        trainable,
        total,
        labels=labels,
        probe=probe,
        neighbour_scores=vote_scores,
    )


def train_adapter(
    recipe: Recipe,
    base: ResolvedBase,
    train_examples: Sequence[Any],
    val_examples: Sequence[Any],
    checkpoint_dir: Path | None = None,
    run_key: str = "",
    progress: Progress | None = None,
) -> TrainedAdapter:
    """Train the recipe's adapter; ``run_key`` (the recipe hash) guards resuming from a checkpoint; ``progress``
    hears of every step and validation loss (``training.progress``).

    Too little data, or ``max_steps`` that end before one epoch, is warned about before training starts, and the
    warnings are recorded on the trained adapter (and so on its registered version).
    """
    if not train_examples:
        raise ValueError("the training split is empty")
    classifier = recipe.task.type == "sequence_classification"
    labels = [e.label for e in train_examples] if classifier else []
    warnings = size_warnings(len(train_examples), labels) + budget_warnings(recipe, len(train_examples))
    for warning in warnings:
        logger.warning("%s: %s", recipe.name, warning)
    check_launch(recipe)  # training.distributed that cannot run here, refused before any process starts
    if classifier:
        trainer = train_classifier
    elif training_of(recipe).distributed.strategy != "none":
        trainer = train_causal_lm_distributed  # torchrun workers; the adapter comes back to this process
    else:
        trainer = train_causal_lm
    trained = trainer(recipe, base, train_examples, val_examples, checkpoint_dir, run_key, progress)
    trained.warnings = warnings + trained.warnings
    systems = {getattr(e, "system", None) for e in train_examples}  # chat: the system turn they share, if any
    trained.contract = recipe.serving_contract(
        answers=() if classifier else trained.labels, labels=trained.labels if classifier else (),
        system_message=(systems.pop() or "") if len(systems) == 1 else "",
    )  # fmt: skip
    return trained
