"""Training progress: the plain line a log shows, the losses streamed to MLflow while training, the thread choice."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow
import pytest
import torch

from adapter_registry.pipelines.hooks import MlflowLossLogger
from adapter_registry.training.features import sft_features
from adapter_registry.training.loop import LoopConfig, TrainResult, train
from adapter_registry.training.models import load_base_model, load_tokenizer
from adapter_registry.training.progress import Progresses, ProgressLine, duration
from adapter_registry.training.threads import THREADS_VARIABLE, choose_threads, threads_for
from helpers import sft_recipe, splits


def _tiny_model_and_features(tiny_llama: Path, sft_data: Path) -> tuple[torch.nn.Module, list, list, int]:
    from peft import LoraConfig, get_peft_model

    tokenizer = load_tokenizer(tiny_llama)
    train_examples, val_examples = splits(sft_recipe(tiny_llama, sft_data), ("train", "validation"))
    torch.manual_seed(0)
    model = get_peft_model(
        load_base_model(tiny_llama, "causal_lm_sft"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    feats = [sft_features(x, tokenizer, 64) for x in (train_examples, val_examples)]
    return model, feats[0], feats[1], tokenizer.pad_token_id


def test_losses_reach_the_log_and_the_mlflow_run_while_training(
    tiny_llama: Path, sft_data: Path, tmp_path: Path
) -> None:
    model, train_feats, val_feats, pad = _tiny_model_and_features(tiny_llama, sft_data)
    config = LoopConfig(max_steps=6, batch_size=4, learning_rate=5e-3, eval_every=3)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("progress")).info.run_id
    logger = MlflowLossLogger(run_id, batch=2, client=client)
    log = io.StringIO()
    seen_before_step: dict[int, int] = {}

    def count_logged(step: int) -> None:  # runs inside the loop, before this step's loss is told
        seen_before_step[step] = len(client.get_metric_history(run_id, "train_loss"))

    result = train(
        model, train_feats, val_feats, config, pad, on_step=count_logged,
        progress=Progresses(ProgressLine("tiny_sft", seconds=0, stream=log), logger),
    )  # fmt: skip

    # streamed while training, two metrics at a time (a validation loss flushes at once): not after it
    assert (seen_before_step[2], seen_before_step[5], seen_before_step[6]) == (0, 3, 5)
    for name, expected in (("train_loss", result.train_loss), ("val_loss", result.val_loss)):
        history = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
        assert [m.step for m in history] == [step for step, _ in expected]
        assert [m.value for m in history] == pytest.approx([loss for _, loss in expected])
    lines = log.getvalue().splitlines()
    assert lines[0] == "tiny_sft train: 6 steps"
    assert any(line.startswith("tiny_sft train: step 3/6 (50%)  loss ") for line in lines), lines
    step6 = [line for line in lines if "step 6/6" in line][-1]  # after its validation
    assert f"val {result.val_loss[-1][1]:.4f} @6" in step6 and "s/step" in step6 and "ETA 0s" in step6
    assert lines[-1].startswith("tiny_sft train: done after 6 steps in ")
    assert f"best validation loss {result.best_val_loss:.4f} at step {result.best_step}" in lines[-1]


def test_a_log_gets_a_line_every_few_seconds_not_one_per_step() -> None:
    log = io.StringIO()
    line = ProgressLine("acme", seconds=3600, stream=log)
    line.started(800, "train", TrainResult(steps=0))
    for step in range(1, 101):
        line.stepped(step, 1.0 / step)
    line.validated(100, 0.5)
    lines = log.getvalue().splitlines()
    assert lines == [
        "acme train: 800 steps",
        lines[1],
    ] and lines[1].startswith("acme train: step 100/800 (12%)  loss 0.0100  val 0.5000 @100  ")
    assert "ETA " in lines[1] and "ETA -" not in lines[1]


def test_a_resumed_run_logs_the_restored_steps_first(tmp_path: Path) -> None:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("resume")).info.run_id
    logger = MlflowLossLogger(run_id, client=client)
    restored = TrainResult(steps=4, train_loss=[(s, 1.0 / s) for s in range(1, 5)], val_loss=[(3, 0.7)])
    logger.started(10, "refit", restored)  # a classifier's second run logs under refit_*
    logger.stepped(5, 0.2)
    logger.finished(restored)
    steps = sorted(m.step for m in client.get_metric_history(run_id, "refit_train_loss"))
    assert steps == [1, 2, 3, 4, 5] and len(client.get_metric_history(run_id, "refit_val_loss")) == 1
    log = io.StringIO()
    ProgressLine("intent_router", stream=log).started(10, "refit", restored)
    assert log.getvalue() == "intent_router refit: 10 steps, resumed at step 4\n"


def test_durations_read_at_a_glance() -> None:
    assert [duration(s) for s in (0.4, 42, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]


def test_threads_follow_the_cores_other_work_leaves_free(monkeypatch: pytest.MonkeyPatch) -> None:
    assert threads_for(2, 0.1) == 2  # idle: every core
    assert threads_for(2, 0.6) == 1 and threads_for(2, 3.5) == 1  # one core taken (or more): at least one
    assert threads_for(8, 2.3) == 5
    assert choose_threads(3).threads == 3
    monkeypatch.setenv(THREADS_VARIABLE, "1")
    choice = choose_threads()
    assert choice.threads == 1 and str(choice) == f"1 torch thread ({THREADS_VARIABLE}=1)"
    monkeypatch.setenv(THREADS_VARIABLE, "two")
    with pytest.raises(ValueError, match=f"{THREADS_VARIABLE}='two' is not a number of threads"):
        choose_threads()
    monkeypatch.delenv(THREADS_VARIABLE)
    measured = choose_threads(window_s=0.2)
    assert measured.others_busy is not None and 1 <= measured.threads <= measured.cores
    assert "set ADAPTER_REGISTRY_THREADS=N to choose" in str(measured)
