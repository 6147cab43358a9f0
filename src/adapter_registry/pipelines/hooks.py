"""Kedro hooks: one MLflow run per recipe namespace, recorded the way MLflow's UI shows it; a summary table at the end.

Kedro may interleave the nodes of different recipes, so each recipe's run is resumed around each of its
nodes and ended after it; a failed node marks its recipe's run FAILED. Each run carries what MLflow's own UI
reads: the recipe's hyperparameters as parameters (``method.*``, ``training.*``, ``evaluation.*``), each data split
as a dataset input (its DVC md5 as digest, its path as source), the git commit (``mlflow.source.git.commit``), the
losses as they are computed (``MlflowLossLogger``, handed to the training loop by the train node) and the
evaluation metrics. The experiment is typed for model training (``mlflow.experimentKind``), not GenAI. In a log
(stderr not a terminal) tqdm's redrawn bars are switched off; training prints its own lines.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.pipeline import Node

from adapter_registry.registry.store import default_tracking_uri

EXPERIMENT = "adapter-registry"
REPORTING_ROOT = "data/08_reporting"  # unless parameters.yml sets reporting_root
# MLflow's record of an experiment's kind (its other kind is genai_development); MLflow 3.17's UI picks its view by
# its own "GenAI / Model training" switch (or ?workflowType=machine_learning), earlier 3.x UIs by this tag
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own tag: the UI links the run to its commit
PARAM_BLOCKS = ("method", "training", "evaluation")  # recipe blocks logged as run parameters
MAX_PARAM = 6000  # MLflow keeps parameter values up to 6000 characters


def recipe_params(recipe: Any) -> dict[str, str]:
    """The recipe's hyperparameters as flat MLflow parameters: ``training.learning_rate`` -> ``"0.0002"``; the base
    as ``base``. Lists are JSON; blocks a recipe does not have (a composed one trains nothing) are left out."""
    data = recipe.model_dump(mode="json")
    params = {"base": recipe.base.identity, "task": str(data["task"]["type"])}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                flatten(f"{prefix}.{key}", item)
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            params[prefix] = text[:MAX_PARAM]

    for block in PARAM_BLOCKS:
        if data.get(block) is not None:
            flatten(block, data[block])
    return params


def log_datasets(recipe_name: str, raw_splits: dict[str, list[dict]], versions: dict[str, dict]) -> None:
    """Every split with a file as a dataset input of the active run: DVC md5 as digest, path as source, its rows'
    schema and count (MLflow's UI lists them under "Datasets used")."""
    import mlflow
    import pandas as pd
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.pandas_dataset import from_pandas

    datasets: list[Any] = []
    contexts: list[str | None] = []
    tags: list[dict[str, str] | None] = []
    for split, version in versions.items():
        with (
            warnings.catch_warnings()
        ):  # a relative path resolves to "local" twice over (file: and no scheme)
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(version["path"])
        name, digest = f"{recipe_name}.{split}", version["md5"]
        try:
            dataset: Any = from_pandas(
                pd.DataFrame(raw_splits.get(split) or []), source=source, name=name, digest=digest
            )
        except (
            Exception
        ):  # rows whose schema MLflow cannot infer (nested chat turns): the file's identity alone
            dataset = MetaDataset(source, name=name, digest=digest)  # type: ignore[abstract]
        datasets.append(dataset)
        contexts.append(split)
        tags.append({"dvc.md5": version["md5"], "dvc.lock_commit": version.get("lock_commit") or ""})
    if datasets:
        mlflow.log_inputs(datasets, contexts=contexts, tags_list=tags)


class MlflowLossLogger:
    """A ``training.loop.Progress`` that streams the losses to an MLflow run as they come, ``batch`` steps at a time:
    ``train_loss`` every step, ``val_loss`` at each validation (``refit_train_loss`` for a classifier's refit).

    A run resumed from a checkpoint logs the steps the checkpoint restored first, so the curve is whole.
    """

    def __init__(self, run_id: str, batch: int = 20, client: Any = None) -> None:
        import mlflow

        self.run_id, self.batch = run_id, batch
        self._client = client or mlflow.MlflowClient()  # the tracking URI the hooks set
        self._pending: list[Any] = []
        self._prefix = ""

    @classmethod
    def for_active_run(cls) -> MlflowLossLogger | None:
        """A logger into the active run (the hooks start one around each node), or None outside one."""
        import mlflow

        active = mlflow.active_run()
        return cls(active.info.run_id) if active is not None else None

    def _add(self, name: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        self._pending.append(Metric(f"{self._prefix}{name}", value, int(time.time() * 1000), step))

    def flush(self) -> None:
        for start in range(0, len(self._pending), 900):  # MLflow takes at most 1000 metrics a batch
            self._client.log_batch(self.run_id, metrics=self._pending[start : start + 900])
        self._pending.clear()

    def started(self, total: int, phase: str, done: Any) -> None:
        self._prefix = "" if phase == "train" else f"{phase}_"
        for step, loss in done.train_loss:
            self._add("train_loss", loss, step)
        for step, loss in done.val_loss:
            self._add("val_loss", loss, step)
        self.flush()

    def stepped(self, step: int, loss: float) -> None:
        self._add("train_loss", loss, step)
        if len(self._pending) >= self.batch:
            self.flush()

    def validated(self, step: int, loss: float) -> None:
        self._add("val_loss", loss, step)
        self.flush()

    def finished(self, result: Any) -> None:
        self.flush()


class MlflowRecipeHooks:
    def __init__(self) -> None:
        self._runs: dict[str, str] = {}
        self._registrations: list[dict[str, Any]] = []
        self._started: dict[str, float] = {}
        self._with_params: set[str] = set()
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

        from adapter_registry.provenance import git_state

        if (
            not sys.stderr.isatty()
        ):  # a log: no tqdm bars redrawn with carriage returns (training says its own)
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()

        mlflow.set_tracking_uri(default_tracking_uri())
        experiment = mlflow.set_experiment(EXPERIMENT)
        if experiment.tags.get(EXPERIMENT_KIND[0]) is None:  # a kind chosen in the UI is left alone
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
        self._git_commit = git_state()[0]
        self._runs.clear()
        self._with_params.clear()
        self._registrations.clear()
        self.node_seconds.clear()
        self._pipeline_started = time.perf_counter()

    @hook_impl
    def before_node_run(self, node: Node, inputs: dict[str, Any]) -> None:
        import mlflow

        self._started[node.name] = time.perf_counter()
        recipe = node.namespace
        if not recipe:
            return
        if recipe in self._runs:
            mlflow.start_run(run_id=self._runs[recipe])
        else:
            tags = {"ar.recipe.name": recipe}
            if self._git_commit:
                tags[GIT_COMMIT_TAG] = self._git_commit
            run = mlflow.start_run(run_name=recipe, tags=tags)
            self._runs[recipe] = run.info.run_id
        if recipe not in self._with_params and f"{recipe}.recipe" in inputs:
            mlflow.log_params(recipe_params(inputs[f"{recipe}.recipe"]))
            self._with_params.add(recipe)

    @hook_impl
    def after_node_run(self, node: Node, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        import mlflow

        self.node_seconds[node.name] = round(time.perf_counter() - self._started.pop(node.name), 3)
        if not node.namespace:
            return
        ns = node.namespace
        mlflow.log_metric(f"node_seconds.{node.name.rsplit('.', 1)[-1]}", self.node_seconds[node.name])
        short = node.name.rsplit(".", 1)[-1]
        if short == "train_adapter_node":
            self._log_training(outputs[f"{ns}.trained_adapter"])
        elif short == "validate_data_node":
            report = outputs[f"{ns}.validation_report"]
            mlflow.log_dict(report, "reports/validation_result.json")
            mlflow.set_tag("ar.data.validation.success", str(report["success"]).lower())
            log_datasets(ns, inputs[f"{ns}.raw_splits"], inputs[f"{ns}.data_versions"])
        elif short == "register_adapter_node":
            self._registrations.append(outputs[f"{ns}.registration"])
        mlflow.end_run()

    @staticmethod
    def _log_training(trained: Any) -> None:
        """The training summary (the losses were streamed while training: ``MlflowLossLogger``)."""
        import mlflow

        result = trained.result
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


SUMMARY_COLUMNS = (
    "recipe",
    "method",
    "trainable",
    "metric",
    "base",
    "adapter",
    "beats base",
    "registered as",
)


def summary_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One row of the summary table per registration, as text."""
    return [
        (
            r["recipe"],
            r["method"],
            f"{100 * r['trainable_share']:.2f}%",
            r["task_metric"],
            f"{r['base_score']:.3f}",
            f"{r['adapter_score']:.3f}",
            "yes" if r["beats_base"] else "NO",
            f"{r['model_name']}/{r['version']} ({r['stage']})",
        )
        for r in rows
    ]


def next_commands(rows: list[dict[str, Any]]) -> list[str]:
    """What a user runs next: promote each new version, then serve each base (with its quantisation)."""
    commands = [
        f"adapter-registry promote {r['model_name']}/{r['version']} --to staging"
        for r in rows
        if r["beats_base"]
    ]
    serving: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        if r.get("base"):
            serving.setdefault((r["base"], r.get("quantization") or ""), []).append(r["model_name"])
    for (base, quantization), names in serving.items():
        option = f" --quantization {quantization}" if quantization else ""
        commands.append(
            f"adapter-registry serve --base {base}{option}   # {', '.join(names)} once in production"
        )
    return commands


def print_summary(rows: list[dict[str, Any]], file: Any = None) -> None:
    """The table `make run` ends with: one row per registered adapter, then the commands to run next.

    On a terminal, a rich table; in a log (stderr/stdout not a terminal) the table is as wide as its contents, so
    nothing is cut, then the warnings and the next commands, one per line.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=file)
    table = Table(title="Registered adapters")
    for column in SUMMARY_COLUMNS:
        table.add_column(column, no_wrap=not console.is_terminal)
    for cells in summary_rows(rows):
        table.add_row(*cells[:6], cells[6] if cells[6] == "yes" else "[red]NO[/red]", cells[7])
    if not console.is_terminal:  # a log: as wide as the table needs, never cut at 80 columns
        wide = Console(file=file, width=100_000)
        console = Console(file=file, width=wide.measure(table).maximum, no_color=True, highlight=False)
    console.print(table)
    for r in rows:
        for warning in r.get("warnings", []):
            console.print(Text.assemble(("warning", "yellow"), f" {r['recipe']}: {warning}"), soft_wrap=True)
    console.print("Next:", soft_wrap=True)
    for command in next_commands(rows):
        console.print(f"  {command}", soft_wrap=True, markup=False)
