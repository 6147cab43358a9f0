"""Training on more than one process: the project's own loop under ``torchrun``, one adapter back to the train node.

A recipe whose ``training.distributed.strategy`` is ``ddp`` or ``fsdp`` is trained here, from
``training.adapter.train_adapter``:

1. :func:`launch_problems` refuses, before any process starts, what cannot run: more processes than GPUs (or, with
   no GPU, than the cores this process may use), FSDP over a bitsandbytes-quantised base, FSDP with a method that
   reads whole gradients, fp16 on a CPU, a classifier. (A batch that does not split into ``processes x
   gradient_accumulation`` micro-batches is refused by the recipe schema already.)
2. :func:`run_in_workers` writes the job (recipe, base, examples) into a temporary folder and runs
   ``python -m torch.distributed.run --standalone --nproc-per-node N -m adapter_registry.training.worker JOB``
   as a child process, waiting for it. Each worker (``training.worker``) builds the same model as one process
   would (``training.adapter.causal_lm_model``), and trains it with the loop and a ``training.sharding.ShardedStepper``.
   Only rank 0 writes checkpoints (in the recipe's checkpoint folder, as one process does: the whole adapter, the
   whole optimizer state, every rank's random generators) and, at the end, the trained adapter folder and the loop's
   result into the job folder. Rank 0 also relays the loop's progress as lines on its stdout, which the node hands to
   its own ``Progress`` (the terminal line, the MLflow run).
3. The node loads that adapter folder onto the base (``training.adapter.train_causal_lm_distributed``): evaluation,
   merge and registration then run once, in the node, as for a one-process adapter.

A worker that dies (killed, out of memory, an exception) makes torchrun stop the others and exit non-zero; the node
raises :class:`DistributedTrainingError` with the rank, the exit code or signal, the last lines of the workers'
output, and the step of the last checkpoint, from which running the pipeline again resumes (with any number of
failed attempts in between, as long as the recipe is unchanged: the checkpoint is keyed by the recipe hash).

Why a ``torchrun`` child process, and not ``accelerate``: ``torchrun`` is the launcher ``accelerate launch``, TRL,
axolotl and torchtune start underneath; as a child of the node it leaves the node's process (its MLflow run, Kedro's
runner, its signal handlers) untouched, and its elastic agent reports which rank failed and how. An in-process
spawn (``accelerate.notebook_launcher``, ``torch.multiprocessing.spawn``) would fork or re-import the Kedro process
instead. The workers use torch's own ``DistributedDataParallel`` and FSDP2 (``fully_shard``) rather than
``accelerate.Accelerator``: accelerate enables FSDP only on accelerators (on a CPU it drops the FSDP plugin and runs
DDP), so its sharded path could not be checked without a GPU, while torch's FSDP2 runs on the gloo backend; the
recipe, not an accelerate config file, says how to train. One machine only (``--standalone``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from adapter_registry.bases.resolve import ResolvedBase
from adapter_registry.methods import method_builder
from adapter_registry.recipes.schema import DistributedSpec, Recipe
from adapter_registry.training.loop import CHECKPOINT, Progress, TrainResult

JOB = "job.pt"  # what the node hands the workers
RESULT = "result.pt"  # what rank 0 hands back: the loop's result and the parameter counts
ADAPTER = "adapter"  # the trained adapter folder rank 0 writes
PROGRESS = "@adapter-registry-progress "  # prefix of rank 0's progress lines on stdout
TAIL = 40  # lines of the workers' output kept for an error

log = logging.getLogger(__name__)


class DistributedTrainingError(RuntimeError):
    """A distributed run that could not start, or a worker that failed; the message names the fix."""


# ------------------------------------------------------------------------------------------------ checks
def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def launch_problems(recipe: Recipe, cores: int | None = None, devices: int | None = None) -> list[str]:
    """What stops the recipe's ``training.distributed`` from running here (``cores``, ``devices``: this machine's
    by default), each with its fix; empty when it can run."""
    training = recipe.training
    if training is None or training.distributed == DistributedSpec():
        return []
    spec = training.distributed
    key = "training.distributed"
    problems = []
    if recipe.task.type != "causal_lm_sft":
        problems.append(
            f"{key} applies to causal_lm_sft recipes; a {recipe.task.type} adapter (an encoder that fits one device, "
            f"with a head fitted beside it) trains in one process. Fix: remove {key}"
        )
    devices = torch.cuda.device_count() if devices is None else devices
    if devices:
        if spec.processes > devices:
            problems.append(
                f"{key}.processes: {spec.processes}, but this machine has {devices} GPU(s) and each process needs "
                f"its own. Fix: processes: {devices} or fewer"
            )
    else:
        cores = available_cores() if cores is None else cores
        if spec.processes > cores:
            problems.append(
                f"{key}.processes: {spec.processes}, but this process may use {cores} CPU core(s) and there is no GPU: "
                f"the processes would wait for each other's cores at every step. Fix: processes: {cores} or fewer"
            )
        if spec.mixed_precision == "fp16":
            problems.append(
                f"{key}.mixed_precision: fp16 is for GPUs (loss scaling, fp16 kernels); there is none here. "
                "Fix: mixed_precision: bf16, or no"
            )
    if spec.strategy == "fsdp":
        problems += _fsdp_problems(recipe, key)
    return problems


def _fsdp_problems(recipe: Recipe, key: str) -> list[str]:
    problems = []
    method = recipe.method
    bits = getattr(method, "bits", None)
    if bits == 8:
        problems.append(
            f"{key}.strategy: fsdp cannot shard an 8-bit base: bitsandbytes keeps it in int8 tensors and FSDP "
            "shards float tensors only. Fix: strategy: ddp (each process holds the 8-bit base), or bits: 4 with "
            "ddp, or a full-precision base (type: lora) with fsdp"
        )
    elif bits == 4:
        problems.append(
            f"{key}.strategy: fsdp cannot shard this 4-bit base: FSDP shards float tensors only, and the base's "
            "4-bit weights are stored as uint8 (bitsandbytes' default bnb_4bit_quant_storage). FSDP-QLoRA needs them "
            "stored in the dtype of the rest of the model (bnb_4bit_quant_storage=bfloat16 with a bfloat16 base; "
            "see bitsandbytes' FSDP-QLoRA guide), which this project's quantisation does not set. Fix: strategy: "
            "ddp (each process holds the 4-bit base, which is what QLoRA makes small), or type: lora with fsdp"
        )
    if method is not None:
        builder = method_builder(method.type)
        if builder.optimizer is not None or builder.step_callback is not None:
            own = "optimizer" if builder.optimizer is not None else "per-step hook"
            problems.append(
                f"{key}.strategy: fsdp shards parameters and gradients, but method {method.type!r} brings its own "
                f"{own}, which reads them whole. Fix: strategy: ddp"
            )
    spec = recipe.training.distributed if recipe.training else DistributedSpec()
    if spec.mixed_precision == "fp16":
        problems.append(
            f"{key}.mixed_precision: fp16 needs loss scaling over sharded gradients, which is not wired for fsdp "
            "here. Fix: mixed_precision: bf16"
        )
    return problems


def check_launch(recipe: Recipe) -> None:
    """Raise :class:`DistributedTrainingError` listing :func:`launch_problems`, before any process starts."""
    problems = launch_problems(recipe)
    if problems:
        raise DistributedTrainingError(
            f"recipe {recipe.name!r} cannot train as asked:\n- " + "\n- ".join(problems)
        )


# ------------------------------------------------------------------------------------------------ the node's side
@contextlib.contextmanager
def run_in_workers(
    recipe: Recipe,
    base: ResolvedBase,
    train_examples: Sequence[Any],
    val_examples: Sequence[Any],
    checkpoint_dir: Path | None,
    run_key: str,
    progress: Progress | None = None,
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Train the recipe in ``training.distributed.processes`` torchrun workers (see the module docstring); yields
    the adapter folder rank 0 wrote and its result (the loop's ``TrainResult``, the parameter counts), both gone
    when the block ends. ``training.adapter.train_causal_lm_distributed`` loads the folder onto the base."""
    check_launch(recipe)
    assert recipe.training is not None
    with tempfile.TemporaryDirectory(prefix="adapter-registry-distributed-") as tmp:
        job = Path(tmp)
        torch.save(
            {
                "recipe": recipe,
                "base": base,
                "train": list(train_examples),
                "validation": list(val_examples),
                "checkpoint_dir": checkpoint_dir,
                "run_key": run_key,
            },
            job / JOB,
        )
        run_workers(job, recipe.training.distributed.processes, progress, checkpoint_dir, run_key)
        yield job / ADAPTER, torch.load(job / RESULT, weights_only=False)


def launch_command(job: Path, processes: int) -> list[str]:
    """The torchrun command the node runs (one machine, no restarts: a failure is the node's to report)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
        "--max-restarts=0", "-m", "adapter_registry.training.worker", str(job),
    ]  # fmt: skip


def run_workers(
    job: Path,
    processes: int,
    progress: Progress | None = None,
    checkpoint_dir: Path | None = None,
    run_key: str = "",
) -> None:
    """Run the workers to the end, their output logged and rank 0's progress relayed; raise
    :class:`DistributedTrainingError` when they fail. Interrupted (Ctrl-C, the node stopped), it stops them."""
    threads = max(1, torch.get_num_threads() // processes)  # the node's share, split among the workers
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    command = launch_command(job, processes)
    log.info("training on %d processes (%d torch thread(s) each): %s", processes, threads, " ".join(command))
    tail: deque[str] = deque(maxlen=TAIL)
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert child.stdout is not None
        for line in child.stdout:
            line = line.rstrip("\n")
            if line.startswith(PROGRESS):
                if progress is not None:
                    _relay(progress, json.loads(line.removeprefix(PROGRESS)))
                continue
            tail.append(line)
            log.info("%s", line, extra={"markup": False})  # a worker's output, printed as it is
        code = child.wait()
    except BaseException:
        child.terminate()  # torchrun passes it on to the workers
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
        raise
    if code != 0:
        raise DistributedTrainingError(failure_message(list(tail), processes, code, checkpoint_dir, run_key))


def failure_message(
    lines: list[str], processes: int, code: int, checkpoint_dir: Path | None = None, run_key: str = ""
) -> str:
    """What failed (torchrun's root-cause report: rank, exit code, signal or exception), where to resume from."""
    text = "\n".join(lines)
    root = _first_cause(text)
    rank = re.search(r"rank\s*:\s*(\d+)", root)
    exitcode = re.search(r"exitcode\s*:\s*(-?\d+)", root)
    cause = re.search(r"traceback\s*:\s*(.+)", root)
    who = f"process {rank[1]} of {processes}" if rank else f"one of the {processes} processes"
    how = f"exit code {exitcode[1]}" if exitcode else f"torchrun exit code {code}"
    if cause and "To enable traceback" not in cause[1]:
        how += f": {cause[1].strip()}"
    saved = _checkpoint_step(checkpoint_dir, run_key)
    resume = (
        f"The last checkpoint (step {saved}) is in {checkpoint_dir}: run again to resume from it."
        if saved
        else "No checkpoint was written yet: running again starts over."
    )
    shown = "\n".join(f"  | {line}" for line in lines[-TAIL:])
    return (
        f"distributed training failed: {who} ended with {how}; torchrun stopped the others. {resume}\n"
        f"Last lines of the processes' output:\n{shown}"
    )


def _first_cause(text: str) -> str:
    """The failure that caused the others, from torchrun's report. Its "Root Cause" is the first failure it
    observed, which may be a rank torchrun itself stopped (SIGTERM) after another was killed, or one whose
    collective broke because its peer died; a rank ended by another signal (a SIGKILL: the OOM killer, a kill -9)
    is the cause, then one that raised, then torchrun's choice."""
    blocks = re.split(r"^\s*\[\d+\]:\s*$", text, flags=re.MULTILINE)[1:]
    codes = [(block, re.search(r"exitcode\s*:\s*(-?\d+)", block)) for block in blocks]
    killed = [block for block, code in codes if code and int(code[1]) < 0 and int(code[1]) != -15]
    if killed:
        return killed[0]
    if "Root Cause" in text:
        return text.split("Root Cause", 1)[-1]
    return text


def _checkpoint_step(checkpoint_dir: Path | None, run_key: str) -> int:
    path = checkpoint_dir / CHECKPOINT if checkpoint_dir else None
    if path is None or not path.is_file():
        return 0
    saved = torch.load(path, weights_only=False)
    return int(saved["result"].steps) if saved.get("run_key") == run_key else 0


# ------------------------------------------------------------------------------------------------ progress relay
class RelayProgress:
    """Rank 0's ``loop.Progress``: each event as one line on stdout, for the node's ``Progress`` (:func:`_relay`)."""

    @staticmethod
    def _send(event: str, **fields: Any) -> None:
        print(PROGRESS + json.dumps({"event": event, **fields}), flush=True)

    def started(self, total: int, phase: str, done: TrainResult) -> None:
        self._send("started", total=total, phase=phase, done=asdict(done))

    def stepped(self, step: int, loss: float) -> None:
        self._send("stepped", step=step, loss=loss)

    def validated(self, step: int, loss: float) -> None:
        self._send("validated", step=step, loss=loss)

    def finished(self, result: TrainResult) -> None:
        self._send("finished", result=asdict(result))


def _result(fields: dict[str, Any]) -> TrainResult:
    curves = {k: [tuple(p) for p in fields[k]] for k in ("train_loss", "val_loss")}
    return TrainResult(**{**fields, **curves})


def _relay(progress: Progress, event: dict[str, Any]) -> None:
    kind = event["event"]
    if kind == "started":
        progress.started(event["total"], event["phase"], _result(event["done"]))
    elif kind == "stepped":
        progress.stepped(event["step"], event["loss"])
    elif kind == "validated":
        progress.validated(event["step"], event["loss"])
    elif kind == "finished":
        progress.finished(_result(event["result"]))
