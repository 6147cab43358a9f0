"""End to end: `kedro run` on tiny recipes in a project in tmp_path, against a real sqlite MLflow registry.

Also the round trip (register → pull → load → the logits of right after training) and the bad-data path
(non-zero exit, report written, registry unchanged).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from adapter_registry.bases.resolve import describe_folder
from adapter_registry.recipes import parse_recipe
from adapter_registry.registry.entities import Tag
from adapter_registry.registry.store import AdapterStore
from adapter_registry.training.adapter import train_adapter
from adapter_registry.training.features import classification_features, collate, sft_features
from adapter_registry.training.models import load_adapter, save_adapter
from helpers import classifier_recipe, neighbour_vote, sft_recipe, splits, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def make_project(folder: Path, recipes: list[dict]) -> Path:
    """A Kedro project that uses the installed package: pyproject, conf/ (copied), one YAML per recipe."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "src").mkdir(exist_ok=True)
    (folder / "pyproject.toml").write_text(
        '[tool.kedro]\npackage_name = "adapter_registry"\nproject_name = "tiny"\n'
        'kedro_init_version = "1.7.0"\nsource_dir = "src"\n'
    )
    shutil.copytree(
        ROOT / "conf", folder / "conf", dirs_exist_ok=True, ignore=shutil.ignore_patterns("local")
    )
    (folder / "conf" / "local").mkdir(exist_ok=True)
    (folder / "pipelines").mkdir(exist_ok=True)
    for recipe in recipes:
        (folder / "pipelines" / f"{recipe['name']}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return folder


def kedro_run(project: Path, db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
        "KEDRO_DISABLE_TELEMETRY": "true",
        "KEDRO_LOGGING_CONFIG": str(project / "conf" / "logging.yml"),
        "COLUMNS": "200",
    }
    kedro = Path(sys.executable).with_name("kedro")
    return subprocess.run(
        [str(kedro), "run", *args], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )


def test_kedro_run_trains_evaluates_merges_and_registers(
    tiny_llama: Path, tiny_bert: Path, sft_data: Path, intent_data: Path, tmp_path: Path
) -> None:
    project = make_project(
        tmp_path / "project", [sft_recipe(tiny_llama, sft_data), classifier_recipe(tiny_bert, intent_data)]
    )
    # roots moved in globals.yml: catalog, parameters and the MLflow hooks must all follow
    (project / "conf" / "base" / "globals.yml").write_text(
        "models_root: out/models\nreporting_root: out/reports\n"
    )
    db = tmp_path / "mlflow.db"
    done = kedro_run(project, db)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Registered adapters" in done.stdout and "tiny_sft/1 (candidate)" in done.stdout

    store = AdapterStore(f"sqlite:///{db}")
    sft = store.get_version("tiny_sft", 1)
    assert sft.stage == "candidate" and sft.tags[Tag.METHOD] == "lora"
    assert sft.tags[Tag.BASE_FINGERPRINT] == describe_folder(tiny_llama).fingerprint
    assert sft.tags[Tag.data_md5("train")] and sft.tags[Tag.data_path("test")].endswith("test.jsonl")
    assert sft.tags[Tag.library("peft")] == "0.21.2" and len(sft.tags[Tag.RECIPE_HASH]) == 64
    assert (
        sft.tags[Tag.REGISTRATION_ID] == f"{sft.tags[Tag.RECIPE_HASH][:16]}:{sft.run_id}"
    )  # a retry finds it
    assert float(sft.tags[Tag.MERGE_PARITY]) < 1e-4 < float(sft.tags[Tag.MERGE_VS_BASE])
    assert Tag.sha256("adapter_model.safetensors") in sft.tags and Tag.sha256("README.md") in sft.tags
    assert {"exact_match", "base.exact_match", "loss", "base.loss", "beats_base"} <= set(sft.metrics)
    cls = store.get_version("tiny_cls", 1)
    assert Tag.sha256("head.safetensors") in cls.tags and cls.tags[Tag.TASK] == "sequence_classification"

    assert not (project / "data").exists()
    reports = project / "out" / "reports"
    assert (project / "out" / "models" / "tiny_cls" / "adapter" / "head.safetensors").is_file()
    evaluation = json.loads((reports / "tiny_cls" / "evaluation.json").read_text())
    assert set(evaluation["per_class_f1"]) == {"delivery", "password", "refund"}
    scores = evaluation["neighbours"]["validation_log_loss"]  # the head alone and 36 votes, on validation
    assert len(scores) == 37 and all(v > 0 for v in scores.values())
    vote = evaluation["neighbours"]["chosen"]
    best = min(scores, key=scores.get)
    if vote is None:
        assert best == "head"
    else:  # the lowest log-loss, over every labelled row, saved with the head
        assert best == f"k={vote['k']},temperature={vote['temperature']:g},weight={vote['weight']:g}"
        labelled = [
            (intent_data / f"{split}.jsonl").read_text().splitlines() for split in ("train", "validation")
        ]
        assert vote["rows"] == sum(map(len, labelled))
        assert (project / "out" / "models" / "tiny_cls" / "adapter" / "neighbours.safetensors").is_file()
    assert (reports / "tiny_cls" / "figures" / "confusion_matrix.png").stat().st_size > 1000
    assert (reports / "tiny_sft" / "figures" / "learning_curves.png").is_file()
    assert json.loads((reports / "tiny_sft" / "merge.json").read_text())["passed"] is True
    assert (reports / "tiny_sft" / "data_docs" / "index.html").is_file()
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    logged = [a.path for a in client.list_artifacts(sft.run_id, "reports/data_docs")]
    assert "reports/data_docs/index.html" in logged
    figures = {a.path for a in client.list_artifacts(cls.run_id, "reports/figures")}
    assert {"reports/figures/confusion_matrix.png", "reports/figures/learning_curves.png"} <= figures
    # warnings found before training are recorded on the version (tiny data; SFT's 6 steps end mid-epoch)
    sft_warnings = json.loads(sft.tags[Tag.WARNINGS])
    assert any(w.startswith("trained on") for w in sft_warnings), sft_warnings
    assert any("of one epoch" in w for w in sft_warnings), sft_warnings
    assert "of one epoch" in done.stdout + done.stderr  # and said before training started
    timings = json.loads((reports / "run_timings.json").read_text())
    assert "tiny_sft.train_adapter_node" in timings["nodes"]
    # what DVC shows (dvc.yaml: metrics, plots), what a log shows, what MLflow's UI shows
    dvc_metrics = json.loads((reports / "dvc-metrics" / "tiny_sft.json").read_text())
    assert dvc_metrics["test"]["exact_match"] == sft.metrics["exact_match"] and "baseline" in dvc_metrics
    curve = json.loads((reports / "dvc-plots" / "tiny_sft.json").read_text())
    assert [r["step"] for r in curve] == list(range(1, 7)) and sum(
        r["val_loss"] is not None for r in curve
    ) == 2
    assert "tiny_sft train: step 6/6 (100%)  loss " in done.stderr
    assert "Loading data from" not in done.stdout + done.stderr  # conf/logging.yml
    assert "Next:" in done.stdout and "adapter-registry serve --base " in done.stdout
    assert sft.description.startswith("# tiny_sft") and "```python" in sft.description
    run = client.get_run(sft.run_id)
    assert run.data.params["training.max_steps"] == "6"
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"tiny_sft.train", "tiny_sft.validation",
                                                                   "tiny_sft.test"}  # fmt: skip
    assert len(client.get_metric_history(sft.run_id, "train_loss")) == 6

    again = kedro_run(project, db, "--namespaces", "tiny_cls")
    assert again.returncode == 0, again.stderr[-3000:]
    assert store.get_version("tiny_cls", 2).stage == "candidate"
    assert [v.version for v in store.list_versions(name="tiny_sft")] == [1]


def test_bad_data_stops_before_training_and_registers_nothing(
    tiny_llama: Path, sft_data: Path, tmp_path: Path
) -> None:
    rows = [json.loads(line) for line in (sft_data / "train.jsonl").read_text().splitlines()]
    rows += rows[:20]  # 30% duplicates
    rows.append({"prompt": "word " * 200, "completion": "refund | ok"})  # far over max_tokens
    write_jsonl(sft_data / "train.jsonl", rows)
    project = make_project(tmp_path / "project", [sft_recipe(tiny_llama, sft_data)])
    db = tmp_path / "mlflow.db"
    done = kedro_run(project, db)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "the data failed validation; nothing was trained or registered" in output
    assert "duplicate" in output.lower() and "token" in output.lower()
    report = json.loads((project / "data" / "08_reporting" / "tiny_sft" / "validation.json").read_text())
    assert report["success"] is False
    assert (project / "data" / "08_reporting" / "tiny_sft" / "data_docs" / "index.html").is_file()
    assert not (project / "data" / "06_models" / "tiny_sft" / "adapter").exists()
    assert AdapterStore(f"sqlite:///{db}").list_versions() == []


@pytest.mark.parametrize("task", ["causal_lm_sft", "sequence_classification"])
def test_round_trip_register_pull_load_gives_the_same_logits(
    task: str, tiny_llama: Path, tiny_bert: Path, sft_data: Path, intent_data: Path, tmp_path: Path
) -> None:
    if task == "causal_lm_sft":
        raw, base = sft_recipe(tiny_llama, sft_data), tiny_llama
    else:
        raw, base = classifier_recipe(tiny_bert, intent_data), tiny_bert
    recipe = parse_recipe(raw)
    train_examples, val_examples, test_examples = splits(raw)
    trained = train_adapter(recipe, describe_folder(base), train_examples, val_examples)
    if task == "causal_lm_sft":
        features = sft_features(test_examples, trained.tokenizer, 64)
    else:
        features = classification_features([e.text for e in test_examples], None, trained.tokenizer, 32)
        if trained.model.neighbours is None:  # the vote travels too, whatever tiny validation data chose
            trained.model.neighbours = neighbour_vote(trained, train_examples)
    batch = collate(features, trained.tokenizer.pad_token_id)
    with torch.no_grad():
        before = trained.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    store = AdapterStore(f"sqlite:///{tmp_path / 'mlflow.db'}")
    folder = save_adapter(trained.model, tmp_path / "adapter", contract=trained.contract)
    tags = {Tag.TASK: task, Tag.BASE_FINGERPRINT: describe_folder(base).fingerprint}
    version = store.register_adapter(
        model_name=recipe.name, adapter_dir=folder, tags=tags, metrics={"loss": 1.0}
    )
    pulled = tmp_path / "pulled"
    store.pull(f"{recipe.name}/{version.version}", pulled)
    reloaded = load_adapter(base, pulled, task)
    with torch.no_grad():
        after = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(before, after, atol=1e-5)
