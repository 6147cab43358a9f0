"""Training on more than one process (``training.distributed``): real torchrun workers on the gloo backend, on the
tiny Llama, against the one-process loop.

Tolerance: two processes take the same steps as one, up to the order of float32 additions: each process's
micro-batch loss is a mean over its own tokens (padded to its own longest row), the micro-batch gradients are summed
by an allreduce, and the reported loss is summed back across processes. Measured on this machine after 6 Adam
steps at lr 5e-3: at most 5e-7 in a loss and 8e-8 in a LoRA weight (DDP, FSDP2, 4 accumulated micro-batches;
activation checkpointing: identical), the largest lora_B entry having moved from 0 to ~0.02. We allow 1e-5: Adam
moves a weight by up to about the learning rate per step, so a wrong gradient fails (weighting each micro-batch's
mean equally instead of by its tokens was tried, and fails the accumulation test; the answers below differ in
length for that reason). A gradient wrong only by a constant factor would pass: Adam's update does not see it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.recipes import Recipe, parse_recipe, recipe_hash
from adapter_registry.recipes.schema import TrainingSpec
from adapter_registry.training.adapter import TrainedAdapter, train_adapter
from adapter_registry.training.distributed import (
    DistributedTrainingError,
    available_cores,
    failure_message,
    launch_problems,
)
from adapter_registry.training.loop import CHECKPOINT, TrainResult
from adapter_registry.training.sharding import micro_batches
from helpers import sft_recipe, splits

TOLERANCE = 1e-5
TRAINING = {"max_steps": 6, "batch_size": 4, "learning_rate": 5e-3, "eval_every": 3, "checkpoint_every": 2,
            "max_length": 64}  # fmt: skip


def _recipe(tiny_llama: Path, sft_data: Path, distributed: dict | None = None, **training: Any) -> Recipe:
    block = {**TRAINING, **training, **({"distributed": distributed} if distributed else {})}
    return parse_recipe(sft_recipe(tiny_llama, sft_data, training=block))


def _train(
    recipe: Recipe, tiny_llama: Path, checkpoints: Path | None = None, progress: Any = None
) -> TrainedAdapter:
    train_examples, val_examples, _ = splits(recipe.model_dump())
    return train_adapter(
        recipe,
        describe_folder(tiny_llama),
        train_examples,
        val_examples,
        checkpoints,
        recipe_hash(recipe),
        progress,
    )


def _lora(trained: TrainedAdapter) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trained.model.named_parameters() if "lora_" in n}


def _assert_same_training(got: TrainedAdapter, want: TrainedAdapter, weights: float = TOLERANCE) -> None:
    assert [s for s, _ in got.result.train_loss] == [s for s, _ in want.result.train_loss]
    assert np.allclose(
        [v for _, v in got.result.train_loss], [v for _, v in want.result.train_loss], atol=TOLERANCE
    )
    assert [s for s, _ in got.result.val_loss] == [s for s, _ in want.result.val_loss]
    assert np.allclose(
        [v for _, v in got.result.val_loss], [v for _, v in want.result.val_loss], atol=TOLERANCE
    )
    mine, reference = _lora(got), _lora(want)
    assert mine.keys() == reference.keys() and mine
    assert max((mine[k] - reference[k]).abs().max().item() for k in mine) < weights
    moved = max(reference[k].abs().max().item() for k in reference if "lora_B" in k)  # lora_B starts at zero
    assert moved > 100 * TOLERANCE
    assert (got.trainable_params, got.total_params) == (want.trainable_params, want.total_params)


class Heard:
    """A ``loop.Progress`` that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def started(self, total: int, phase: str, done: TrainResult) -> None:
        self.events.append(("started", (total, phase, done.steps)))

    def stepped(self, step: int, loss: float) -> None:
        self.events.append(("stepped", step))

    def validated(self, step: int, loss: float) -> None:
        self.events.append(("validated", step))

    def finished(self, result: TrainResult) -> None:
        self.events.append(("finished", result.steps))


@pytest.fixture(scope="module")
def sft_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Support rows whose answers run from 6 to about 30 tokens, in a folder that lives as long as the module (the
    runs are shared by tests). Unequal answers make micro-batches score unequal numbers of tokens, so that only the
    token-weighted sum of their losses is the whole batch's mean (with equal answers, any average would pass)."""
    from helpers import _drop_overlap, support_rows, write_jsonl

    folder = tmp_path_factory.mktemp("distributed") / "sft_data"
    for split, n, seed in (("train", 48, 1), ("validation", 12, 2), ("test", 12, 3)):
        rows = support_rows(n, seed)
        for i, row in enumerate(rows):
            row["completion"] += " and we will write back to you soon" * (i % 4)
        write_jsonl(folder / f"{split}.jsonl", rows)
    _drop_overlap(folder, "prompt")
    return folder


@pytest.fixture(scope="module")
def one_process(tiny_llama: Path, sft_folder: Path) -> TrainedAdapter:
    return _train(_recipe(tiny_llama, sft_folder), tiny_llama)


@pytest.fixture(scope="module")
def two_processes(tiny_llama: Path, sft_folder: Path) -> dict[str, TrainedAdapter]:
    """Filled by the equivalence test: strategy -> its two-process run."""
    return {}


# ------------------------------------------------------------------------------------------------ equivalence
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_like_one(
    strategy: str,
    tiny_llama: Path,
    sft_folder: Path,
    one_process: TrainedAdapter,
    two_processes: dict[str, TrainedAdapter],
) -> None:
    heard = Heard()
    recipe = _recipe(tiny_llama, sft_folder, {"strategy": strategy, "processes": 2})
    trained = _train(recipe, tiny_llama, progress=heard)
    _assert_same_training(trained, one_process)
    assert heard.events == [("started", (6, "train", 0)), *[("stepped", s) for s in (1, 2, 3)], ("validated", 3),
                            *[("stepped", s) for s in (4, 5, 6)], ("validated", 6), ("finished", 6)]  # fmt: skip
    two_processes[strategy] = trained


@pytest.mark.slow
def test_qlora_under_ddp_trains_like_one_process(tiny_llama: Path, sft_folder: Path) -> None:
    """The fix the FSDP refusal names for a 4-bit base: each process holds the quantised base. The weights get 1e-4:
    bitsandbytes' 4-bit CPU matmul rounds differently with the batch's shape, so that one process with 2 or 4
    micro-batches (no second process) already differs from one batch by 3e-5 in a weight (losses within 1e-6)."""

    def recipe(distributed: dict | None) -> Recipe:
        training = {**TRAINING, **({"distributed": distributed} if distributed else {})}
        method = {"type": "qlora", "r": 4, "alpha": 8, "dropout": 0.0}
        return parse_recipe(sft_recipe(tiny_llama, sft_folder, method=method, merge={"enabled": False},
                                       training=training))  # fmt: skip

    two = _train(recipe({"strategy": "ddp", "processes": 2}), tiny_llama)
    _assert_same_training(two, _train(recipe(None), tiny_llama), weights=1e-4)
    assert (
        type(two.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    )


@pytest.mark.parametrize(
    "distributed",
    [{"gradient_accumulation": 4}, {"activation_checkpointing": True}],
    ids=["accumulation", "ckpt"],
)
def test_one_process_accumulation_and_checkpointing_take_the_same_steps(
    distributed: dict, tiny_llama: Path, sft_folder: Path, one_process: TrainedAdapter
) -> None:
    trained = _train(_recipe(tiny_llama, sft_folder, distributed), tiny_llama)
    _assert_same_training(trained, one_process)
    checkpointed = trained.model.get_base_model().is_activation_checkpointing
    assert checkpointed == distributed.get("activation_checkpointing", False)


def test_bf16_autocast_trains_close_to_float32(
    tiny_llama: Path, sft_folder: Path, one_process: TrainedAdapter
) -> None:
    trained = _train(_recipe(tiny_llama, sft_folder, {"mixed_precision": "bf16"}), tiny_llama)
    losses = [v for _, v in trained.result.train_loss]
    # bfloat16 keeps 8 bits of mantissa: ~0.4% per product, averaged over the sums
    assert np.allclose(losses, [v for _, v in one_process.result.train_loss], rtol=1e-2)
    assert losses[-1] < losses[0]


# ------------------------------------------------------------------------------------------------ lineage
@pytest.mark.slow
def test_the_registered_version_records_strategy_and_world_size(
    tiny_llama: Path,
    sft_folder: Path,
    two_processes: dict[str, TrainedAdapter],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from adapter_registry.pipelines.register.nodes import lineage_facts
    from adapter_registry.registry.entities import Tag
    from adapter_registry.registry.lineage import distribution_of, lineage_tags
    from adapter_registry.registry.store import AdapterStore
    from adapter_registry.training.models import save_adapter

    recipe = _recipe(tiny_llama, sft_folder, {"strategy": "ddp", "processes": 2})
    trained = two_processes.get("ddp") or _train(recipe, tiny_llama)
    monkeypatch.chdir(tmp_path)
    folder = save_adapter(trained.model, tmp_path / "adapter", trained.contract)
    base = describe_folder(tiny_llama)
    facts = lineage_facts(recipe, base, folder, trained, {"warnings": []}, {"success": True}, {}, None)
    store = AdapterStore(f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = store.register_adapter(recipe.model_name, folder, lineage_tags(facts), {"exact_match": 0.5})
    registered = store.resolve(version.ref)
    assert distribution_of(registered) == ("ddp", 2)
    assert '"distributed": {"activation_checkpointing": false, "gradient_accumulation": 1, "mixed_precision": ' \
           '"no", "processes": 2, "strategy": "ddp"}' in registered.tags[Tag.TRAINING]  # fmt: skip
    one = lineage_tags(lineage_facts(_recipe(tiny_llama, sft_folder), base, folder, trained, {"warnings": []},
                                     {"success": True}, {}, None))  # fmt: skip
    assert "distributed" not in one[Tag.TRAINING]  # a one-process recipe's tag is what it always was


# ------------------------------------------------------------------------------------------------ a killed worker
def _kill_rank_1_after_a_checkpoint(checkpoints: Path, killed: list[int]) -> None:
    import psutil

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (checkpoints / CHECKPOINT).is_file():
        time.sleep(0.01)
    for child in psutil.Process().children(recursive=True):
        try:
            if child.environ().get("RANK") == "1" and "adapter_registry.training.worker" in child.cmdline():
                os.kill(child.pid, signal.SIGKILL)
                killed.append(child.pid)
        except psutil.Error:
            continue


@pytest.mark.slow
def test_a_killed_worker_fails_the_node_clearly_and_the_next_run_resumes(
    tiny_llama: Path, sft_folder: Path, tmp_path: Path
) -> None:
    steps = 40
    recipe = _recipe(
        tiny_llama, sft_folder, {"strategy": "ddp", "processes": 2}, max_steps=steps, eval_every=10
    )
    checkpoints = tmp_path / "checkpoints"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_rank_1_after_a_checkpoint, args=(checkpoints, killed))
    killer.start()
    with pytest.raises(DistributedTrainingError, match=r"process 1 of 2 ended with exit code -9") as failure:
        _train(recipe, tiny_llama, checkpoints)
    killer.join()
    assert killed
    message = str(failure.value)
    assert "SIGKILL" in message and "run again to resume from it" in message, message
    resumed = _train(recipe, tiny_llama, checkpoints).result
    assert 2 <= resumed.resumed_from < steps
    straight = _train(_recipe(tiny_llama, sft_folder, max_steps=steps, eval_every=10), tiny_llama).result
    assert [s for s, _ in resumed.train_loss] == list(range(1, steps + 1))
    assert np.allclose(
        [v for _, v in resumed.train_loss], [v for _, v in straight.train_loss], atol=TOLERANCE
    )
    assert not (checkpoints / CHECKPOINT).exists()


# ------------------------------------------------------------------------------------------------ bad input
def test_a_batch_that_does_not_split_evenly_is_refused_naming_the_sizes_that_do() -> None:
    with pytest.raises(
        ValidationError, match=r"batch_size: 10 does not split .* 2 x 2 = 4 .* Fix: batch_size: 8 or 12"
    ):
        TrainingSpec(max_steps=1, batch_size=10, distributed={"strategy": "ddp", "processes": 2,
                                                               "gradient_accumulation": 2})  # fmt: skip
    with pytest.raises(ValidationError, match=r"processes: 2 needs a strategy .* Fix: strategy: ddp"):
        TrainingSpec(max_steps=1, distributed={"processes": 2})


def test_the_default_block_leaves_the_recipe_and_its_hash_as_they_were(
    tiny_llama: Path, sft_data: Path
) -> None:
    plain = _recipe(tiny_llama, sft_data)
    explicit = _recipe(tiny_llama, sft_data, {"strategy": "none", "processes": 1, "mixed_precision": "no"})
    assert "distributed" not in plain.model_dump()["training"]
    assert recipe_hash(plain) == recipe_hash(explicit)
    assert recipe_hash(_recipe(tiny_llama, sft_data, {"strategy": "ddp", "processes": 2})) != recipe_hash(
        plain
    )


def test_more_processes_than_cores_or_gpus_is_refused_before_any_process_starts(
    tiny_llama: Path, sft_data: Path, tmp_path: Path
) -> None:
    recipe = _recipe(tiny_llama, sft_data, {"strategy": "ddp", "processes": 4})
    assert launch_problems(recipe, cores=4, devices=0) == []
    (cpu,) = launch_problems(recipe, cores=2, devices=0)
    assert "may use 2 CPU core(s) and there is no GPU" in cpu and "Fix: processes: 2 or fewer" in cpu
    (gpu,) = launch_problems(recipe, cores=64, devices=2)
    assert "has 2 GPU(s)" in gpu and "Fix: processes: 2 or fewer" in gpu
    n = available_cores() + 1
    too_many = _recipe(tiny_llama, sft_data, {"strategy": "ddp", "processes": n}, batch_size=n)
    if not torch.cuda.is_available():
        with pytest.raises(DistributedTrainingError, match=r"cannot train as asked:\n- .*Fix: processes: "):
            _train(too_many, tiny_llama, tmp_path / "checkpoints")
        assert not (tmp_path / "checkpoints").exists()  # nothing ran


def test_fsdp_over_a_quantised_base_or_with_a_whole_gradient_method_is_refused(
    tiny_llama: Path, sft_data: Path
) -> None:
    def problems(method: dict, **distributed: Any) -> list[str]:
        recipe = parse_recipe(sft_recipe(tiny_llama, sft_data, method=method, merge={"enabled": False},
                                         training={**TRAINING, "distributed": distributed}))  # fmt: skip
        return launch_problems(recipe, cores=8, devices=0)

    fsdp = {"strategy": "fsdp", "processes": 2}
    (four,) = problems({"type": "qlora", "r": 4, "alpha": 8}, **fsdp)
    assert "bnb_4bit_quant_storage" in four and "Fix: strategy: ddp" in four
    (eight,) = problems({"type": "qlora", "r": 4, "alpha": 8, "bits": 8}, **fsdp)
    assert "8-bit base" in eight and "Fix: strategy: ddp" in eight
    assert problems({"type": "qlora", "r": 4, "alpha": 8}, strategy="ddp", processes=2) == []
    (adalora,) = problems({"type": "adalora", "init_r": 4, "target_r": 2}, **fsdp)
    assert "own per-step hook" in adalora and "Fix: strategy: ddp" in adalora
    (fp16,) = problems(
        {"type": "lora", "r": 4, "alpha": 8}, strategy="ddp", processes=2, mixed_precision="fp16"
    )
    assert "fp16 is for GPUs" in fp16


def test_a_classifier_is_refused(tiny_bert: Path, intent_data: Path) -> None:
    from helpers import classifier_recipe

    recipe = parse_recipe(classifier_recipe(tiny_bert, intent_data, training={
        "epochs": 1, "batch_size": 8, "distributed": {"strategy": "ddp", "processes": 2}}))  # fmt: skip
    (problem,) = launch_problems(recipe, cores=8, devices=0)
    assert "applies to causal_lm_sft recipes" in problem and "Fix: remove training.distributed" in problem


def test_micro_batches_cover_the_batch_once_in_near_equal_runs() -> None:
    assert micro_batches(8, 4) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert micro_batches(3, 4) == [[0], [1], [2], []]
    assert sorted(i for part in micro_batches(23, 6) for i in part) == list(range(23))


def test_failure_message_names_the_rank_the_signal_and_the_resume(tmp_path: Path) -> None:
    report = """[rank1]: something
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_10:00:00
  host      : box
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 4242)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 4242
============================================================""".splitlines()
    message = failure_message(report, 2, 1, tmp_path, "k")
    assert message.startswith(
        "distributed training failed: process 1 of 2 ended with exit code -9: Signal 9 (SIGKILL) received by PID 4242"
    )
    assert "No checkpoint was written yet" in message and "  | [rank1]: something" in message


def test_the_killed_rank_is_named_even_when_torchrun_observed_a_stopped_one_first(tmp_path: Path) -> None:
    """The report of a run seen in CI: rank 1 was killed (-9) and rank 0, whose gloo peer vanished, was stopped
    by torchrun (-15) and is what torchrun calls the root cause; the killed rank is the cause."""
    report = """Failures:
[1]:
  time      : 2026-11-30_15:54:01
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 13457)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 13457
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_15:54:01
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 13456)
  error_file: /tmp/torchelastic/error.json
  traceback : Traceback (most recent call last):
  RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error
============================================================""".splitlines()
    message = failure_message(report, 2, 1, tmp_path, "k")
    assert message.startswith(
        "distributed training failed: process 1 of 2 ended with exit code -9: Signal 9 (SIGKILL) received by PID 13457"
    ), message


def test_the_memory_plan_counts_an_8b_llama_as_torchtune_does() -> None:
    """The paper plan's parameter counts (meta device, peft) and its single-device estimate against torchtune's
    measured peak, once the two things torchtune does not keep are taken out (benchmarks/distributed_plan.py)."""
    from benchmarks.distributed_plan import GIB, count, plan_row

    c = count("llama-3.1-8b", rank=8)
    assert c.total == 8_030_261_248 and c.trainable == 32 * 8 * (
        3 * (4096 + 4096) - 4096 + 1024 + 3 * (4096 + 14336)
    )
    lora = plan_row(c, "lora", "none", 1, 2, 2048, 8, True, 1.0)
    assert lora["base_gib"] == pytest.approx(c.total * 2 / GIB)
    fsdp = plan_row(c, "lora", "fsdp", 8, 2, 2048, 8, True, 1.0)
    assert (
        fsdp["base_gib"] == pytest.approx(lora["base_gib"] / 8) and fsdp["total_gib"] < lora["total_gib"] / 2
    )
    logits, copies = 2 * 2048 * 6 * c.vocab / GIB, 2 * 2048 * 4 * c.adapted_inputs / GIB
    assert lora["total_gib"] - logits - copies == pytest.approx(16.2, rel=0.06)  # torchtune, RTX 4090
    qlora = plan_row(c, "qlora", "none", 1, 2, 2048, 8, True, 1.0)
    assert qlora["total_gib"] - logits - copies == pytest.approx(7.4, rel=0.06)
