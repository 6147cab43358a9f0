"""A torchrun worker of ``training.distributed``: ``python -m torch.distributed.run ... -m adapter_registry.training.worker
JOB_DIR``.

Each worker builds the model one process would (``training.adapter.causal_lm_model``: same seed, same initial
adapter) and trains it with the loop and a ``training.sharding.ShardedStepper``; rank 0 relays the loop's progress
on its stdout (``distributed.RelayProgress``), writes the checkpoints, and at the end the trained adapter folder and
the loop's result into the job folder, for the train node to load. (A module of its own: it imports
``training.adapter``, which imports ``training.distributed``.)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from adapter_registry.bases.resolve import ResolvedBase
from adapter_registry.recipes.schema import Recipe
from adapter_registry.training.adapter import _train_with_method, causal_lm_model, total_steps, training_of
from adapter_registry.training.distributed import ADAPTER, JOB, RESULT, RelayProgress
from adapter_registry.training.features import sft_features
from adapter_registry.training.loop import model_loss
from adapter_registry.training.models import answer_only_loss_fn, load_tokenizer, trainable_parameters
from adapter_registry.training.sharding import ShardedStepper


def train_here(job: dict[str, Any], rank: int, world: int, device: torch.device) -> dict[str, Any]:
    """One worker's training: the model one process would build, the loop with a ``ShardedStepper``; every rank
    returns the gathered trainable state (rank 0 writes it)."""
    recipe: Recipe = job["recipe"]
    base: ResolvedBase = job["base"]
    training = training_of(recipe)
    tokenizer = load_tokenizer(base.path)
    train_feats = sft_features(job["train"], tokenizer, training.max_length)
    val_feats = sft_features(job["validation"], tokenizer, training.max_length)
    steps = total_steps(recipe, len(train_feats))
    model = causal_lm_model(recipe, base, steps)
    trainable, total = trainable_parameters(model)  # counted before FSDP shards them
    if training.distributed.strategy != "fsdp":
        model.to(device)  # FSDP moves each shard to the device itself
    loss_fn = answer_only_loss_fn(model) or model_loss
    stepper = ShardedStepper(model, loss_fn, training.distributed, rank, world, device)
    result = _train_with_method(
        recipe, model, model, train_feats, val_feats, steps, tokenizer.pad_token_id, job["checkpoint_dir"],
        job["run_key"], loss_fn=loss_fn, progress=RelayProgress() if rank == 0 else None, stepper=stepper,
    )  # fmt: skip
    state = stepper.trainable_state(model)  # gathered whole under FSDP (every rank takes part)
    return {
        "result": result,
        "trainable_params": trainable,
        "total_params": total,
        "state": {k: v.cpu() for k, v in state.items()},
        "model": model,
    }


def _save(trained: dict[str, Any], job: Path, strategy: str) -> None:
    """Rank 0: the adapter folder (peft's own files) and the loop's result."""
    folder = job / ADAPTER
    if strategy == "fsdp":  # the model's own parameters are shards: save the gathered state instead
        trained["model"].save_pretrained(str(folder), state_dict=trained["state"])
    else:
        trained["model"].cpu().save_pretrained(str(folder))
    torch.save({k: trained[k] for k in ("result", "trainable_params", "total_params")}, job / RESULT)


def main(argv: Sequence[str] | None = None) -> None:
    """A worker, started by torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in its environment)."""
    import torch.distributed as dist
    from torch.distributed.elastic.multiprocessing.errors import record

    @record  # an exception here reaches torchrun's failure report with its traceback
    def run(job_dir: Path) -> None:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit():
            torch.set_num_threads(int(threads))
        if torch.cuda.is_available():
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        try:
            job = torch.load(job_dir / JOB, weights_only=False)
            trained = train_here(job, rank, world, device)
            if rank == 0:
                _save(trained, job_dir, job["recipe"].training.distributed.strategy)
            dist.barrier()
        finally:
            dist.destroy_process_group()

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit(
            "usage: python -m torch.distributed.run ... -m adapter_registry.training.distributed JOB_DIR"
        )
    run(Path(args[0]))


if __name__ == "__main__":
    main()
