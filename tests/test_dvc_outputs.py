"""`dvc metrics show` and `dvc plots show` read what the evaluate node writes, through the project's dvc.yaml."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from adapter_registry.evaluation.report import dvc_metrics, learning_curve
from adapter_registry.training.loop import TrainResult

ROOT = Path(__file__).resolve().parents[1]
REPORT = {
    "metrics": {"exact_match": 0.953, "exact_match_ci_low": 0.925, "exact_match_ci_high": 0.975},
    "base_metrics": {"exact_match": 0.253},
    "beats_base": True,
    "trainable_share": 0.035,
    "training": {"steps": 6, "best_step": 6, "best_val_loss": 0.41, "wall_s": 3.2, "tokens": 99},
}


def dvc(repo: Path, *args: str) -> str:
    command = [str(Path(sys.executable).with_name("dvc")), *args]
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, check=True, timeout=120).stdout


def test_dvc_lists_every_adapters_metrics_and_draws_its_learning_curve(tmp_path: Path) -> None:
    repo = tmp_path / "project"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    dvc(repo, "init", "--no-scm", "-q")
    result = TrainResult(
        steps=6, train_loss=[(s, 2.0 / s) for s in range(1, 7)], val_loss=[(3, 0.6), (6, 0.41)]
    )
    reports = repo / "data" / "08_reporting"  # as the catalog writes them (conf/base/catalog.yml)
    for recipe in ("acme_support_lora", "intent_router"):
        (reports / "dvc-metrics").mkdir(parents=True, exist_ok=True)
        (reports / "dvc-metrics" / f"{recipe}.json").write_text(json.dumps(dvc_metrics(REPORT)))
        (reports / "dvc-plots").mkdir(parents=True, exist_ok=True)
        (reports / "dvc-plots" / f"{recipe}.json").write_text(json.dumps(learning_curve(result)))

    (shown,) = json.loads(dvc(repo, "metrics", "show", "--json")).values()  # one revision: the workspace
    metrics = shown["data"]
    acme = metrics["data/08_reporting/dvc-metrics/acme_support_lora.json"]["data"]
    assert acme["test"]["exact_match"] == 0.953 and acme["baseline"]["exact_match"] == 0.253
    assert (
        acme["training"] == {"steps": 6, "best_step": 6, "best_val_loss": 0.41} and acme["beats_base"] is True
    )
    assert "data/08_reporting/dvc-metrics/intent_router.json" in metrics

    plots = json.loads(dvc(repo, "plots", "show", "--json"))
    assert "errors" not in plots, plots.get("errors")
    (plot,) = plots["data"]["data/08_reporting/dvc-plots/acme_support_lora.json"]
    points = plot["content"]["data"]["values"]
    drawn = {(p["field"], p["step"]) for p in points if p["dvc_inferred_y_value"] is not None}
    assert drawn == {("train_loss", s) for s in range(1, 7)} | {("val_loss", 3), ("val_loss", 6)}
