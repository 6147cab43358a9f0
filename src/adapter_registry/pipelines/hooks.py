"""Kedro hooks: one MLflow run per recipe namespace, the loss curve logged, a summary table at the end.

Kedro may interleave the nodes of different recipes, so each recipe's run is resumed around each of its
nodes and ended after it; a failed node marks its recipe's run FAILED.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.pipeline import Node

from adapter_registry.registry.store import default_tracking_uri

EXPERIMENT = "adapter-registry"
REPORTING_ROOT = "data/08_reporting"  # unless parameters.yml sets reporting_root


class MlflowRecipeHooks:
    def __init__(self) -> None:
        self._runs: dict[str, str] = {}
        self._registrations: list[dict[str, Any]] = []
        self._started: dict[str, float] = {}
        self.node_seconds: dict[str, float] = {}
        # Data Docs per recipe; run_timings.json (seconds per node)
        self.reporting_root = Path(REPORTING_ROOT)

    @hook_impl
    def after_catalog_created(self, parameters: dict[str, Any]) -> None:
        # Kedro passes {"parameters": {...}, "params:<name>": value, ...}
        self.reporting_root = Path(parameters.get("params:reporting_root") or REPORTING_ROOT)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        import mlflow

        mlflow.set_tracking_uri(default_tracking_uri())
        mlflow.set_experiment(EXPERIMENT)
        self._runs.clear()
        self._registrations.clear()
        self.node_seconds.clear()
        self._pipeline_started = time.perf_counter()

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        import mlflow

        self._started[node.name] = time.perf_counter()
        recipe = node.namespace
        if not recipe:
            return
        if recipe in self._runs:
            mlflow.start_run(run_id=self._runs[recipe])
        else:
            run = mlflow.start_run(run_name=recipe, tags={"ar.recipe.name": recipe})
            self._runs[recipe] = run.info.run_id

    @hook_impl
    def after_node_run(self, node: Node, outputs: dict[str, Any]) -> None:
        import mlflow

        self.node_seconds[node.name] = round(time.perf_counter() - self._started.pop(node.name), 3)
        if not node.namespace:
            return
        mlflow.log_metric(f"node_seconds.{node.name.rsplit('.', 1)[-1]}", self.node_seconds[node.name])
        short = node.name.rsplit(".", 1)[-1]
        if short == "train_adapter_node":
            self._log_training(outputs[f"{node.namespace}.trained_adapter"])
        elif short == "validate_data_node":
            report = outputs[f"{node.namespace}.validation_report"]
            mlflow.log_dict(report, "reports/validation_result.json")
            mlflow.set_tag("ar.data.validation.success", str(report["success"]).lower())
        elif short == "register_adapter_node":
            self._registrations.append(outputs[f"{node.namespace}.registration"])
        mlflow.end_run()

    @staticmethod
    def _log_training(trained: Any) -> None:
        import mlflow
        from mlflow.entities import Metric

        result = trained.result
        now = 0
        metrics = [Metric("train_loss", loss, now, step) for step, loss in result.train_loss]
        metrics += [Metric("val_loss", loss, now, step) for step, loss in result.val_loss]
        client = mlflow.MlflowClient()
        active = mlflow.active_run()
        assert active is not None  # before_node_run started it
        run_id = active.info.run_id
        for start in range(0, len(metrics), 900):
            client.log_batch(run_id, metrics=metrics[start : start + 900])
        summary = result.summary()
        mlflow.log_metrics(
            {
                "tokens_per_s": summary["tokens_per_s"],
                "train_wall_s": summary["wall_s"],
                "best_step": summary["best_step"],
                "trainable_share": trained.trainable_share,
            }
        )
        mlflow.set_tags(
            {
                "ar.training.stopped_early": str(result.stopped_early).lower(),
                "ar.training.overfitting": str(result.overfitting).lower(),
            }
        )

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, node: Node) -> None:
        """Data Docs exist only once the validation report is saved (after the node): log them then."""
        import mlflow

        if not (dataset_name.endswith(".validation_report") and node.namespace in self._runs):
            return
        docs = self.reporting_root / node.namespace / "data_docs"
        if docs.is_dir():
            with mlflow.start_run(run_id=self._runs[node.namespace]):
                mlflow.log_artifacts(str(docs), "reports/data_docs")

    @hook_impl
    def on_node_error(self, node: Node) -> None:
        import mlflow

        if node.namespace and mlflow.active_run():
            mlflow.end_run(status="FAILED")

    @hook_impl
    def after_pipeline_run(self, catalog: Any) -> None:
        timings = {
            "total_seconds": round(time.perf_counter() - self._pipeline_started, 3),
            "nodes": self.node_seconds,
        }
        out = self.reporting_root / "run_timings.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(timings, indent=2))
        if self._registrations:
            print_summary(self._registrations)


def print_summary(rows: list[dict[str, Any]]) -> None:
    """The table `make run` ends with: one row per registered adapter."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Registered adapters")
    for column in (
        "recipe",
        "method",
        "trainable",
        "metric",
        "base",
        "adapter",
        "beats base",
        "registered as",
    ):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["recipe"],
            r["method"],
            f"{100 * r['trainable_share']:.2f}%",
            r["task_metric"],
            f"{r['base_score']:.3f}",
            f"{r['adapter_score']:.3f}",
            "yes" if r["beats_base"] else "[red]NO[/red]",
            f"{r['model_name']}/{r['version']} ({r['stage']})",
        )
    console = Console()
    console.print(table)
    for r in rows:
        for warning in r.get("warnings", []):
            console.print(f"[yellow]warning[/yellow] {r['recipe']}: {warning}")
