"""`adapter-registry reproduce` against a real git + DVC project in tmp_path, trained and registered by `kedro run`.

The project is this repository's pyproject.toml, conf/ and src/ around one tiny recipe: a 2-layer BERT (random
weights, the real all-MiniLM-L6-v2 tokenizer) with a LoRA classifier trained for 3 steps on 45 rows that
`dvc add` tracks and `dvc push` copies to a local remote. It is trained and registered once per module; the
tests then reproduce it, and refuse an unknown version, an empty commit, a dirty tree and tampered data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from adapter_registry.cli import app
from adapter_registry.registry.entities import Tag
from adapter_registry.reproduce import MetricCheck, ReproduceReport, _reporting_root, compare_metrics
from helpers import build_tiny_bert

REPO = Path(__file__).resolve().parents[1]
RECIPE = "tiny_router"
SPLITS = {"train": (24, 0), "validation": (9, 100), "test": (12, 200)}
LABELS = ("vpn_access", "payroll", "printer_issue")
ENV = {"HF_HUB_OFFLINE": "1", "KEDRO_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}

RECIPE_YAML = """\
name: tiny_router
base:
  path: {base}
task:
  type: sequence_classification
data:
  format: classification
  train: data/05_model_input/tiny/train.jsonl
  validation: data/05_model_input/tiny/validation.jsonl
  test: data/05_model_input/tiny/test.jsonl
expectations:
  min_rows: 5
  max_tokens: 32
method:
  type: lora
  r: 4
  alpha: 8
  dropout: 0.1
  target_modules: [query, value]
training:
  max_steps: 3
  batch_size: 8
  max_length: 32
  eval_every: 2
  checkpoint_every: 100
  seed: 0
evaluation:
  metrics: [accuracy, macro_f1, loss]
  must_beat_base: false
  bootstrap_samples: 20
"""


def run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        list(args), cwd=cwd, env={**os.environ, **ENV, **(env or {})}, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


def tiny_base(folder: Path) -> Path:
    """A 2-layer random BERT with the real MiniLM tokenizer (mean pooling), as in every other test."""
    return build_tiny_bert(folder)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """git + DVC project with one recipe, trained and registered once (version tiny_router/1)."""
    tmp = tmp_path_factory.mktemp("reproduce")
    root = tmp / "proj"
    root.mkdir()
    base = tiny_base(tmp / "tiny_bert")
    shutil.copy(REPO / "pyproject.toml", root)
    shutil.copytree(REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "conf" / "local" / ".gitkeep").touch()
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / ".gitignore").write_text("*.db\nmlruns/\ndata/06_models/\ndata/08_reporting/\n.dvc-storage/\n")
    (root / "pipelines").mkdir()
    (root / "pipelines" / f"{RECIPE}.yaml").write_text(RECIPE_YAML.format(base=base))
    data = root / "data" / "05_model_input" / "tiny"
    data.mkdir(parents=True)
    for split, (n, start) in SPLITS.items():
        rows = [{"text": f"ticket {i}: something about {LABELS[i % 3]}", "label": LABELS[i % 3]}
                for i in range(start, start + n)]  # fmt: skip
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dvc = [sys.executable, "-m", "dvc"]
    run(root, "git", "init", "-q")
    run(root, *dvc, "init", "-q")
    run(root, *dvc, "remote", "add", "-d", "local", ".dvc-storage")  # as in the real repo: ../.dvc-storage
    run(root, *dvc, "add", "-q", *(f"data/05_model_input/tiny/{s}.jsonl" for s in SPLITS))
    run(root, *dvc, "push", "-q")
    run(root, "git", "add", "-A")
    run(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "tiny project")
    uri = f"sqlite:///{tmp / 'registry.db'}"
    run(root, sys.executable, "-m", "kedro", "run", "--namespaces", RECIPE,
        env={"MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(root / "src")})  # fmt: skip
    return {"root": root, "uri": uri, "tmp": tmp}


def cli(project: dict[str, Any], *args: str) -> Any:
    return CliRunner().invoke(
        app, ["--tracking-uri", project["uri"], "reproduce", *args, "--repo", str(project["root"])]
    )


@contextmanager
def version_tag(project: dict[str, Any], key: str, value: str) -> Iterator[None]:
    """Temporarily rewrite one tag of tiny_router/1 (as a version registered differently would have it)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=project["uri"], registry_uri=project["uri"])
    old = client.get_model_version(RECIPE, "1").tags[key]
    client.set_model_version_tag(RECIPE, "1", key, value)
    try:
        yield
    finally:
        client.set_model_version_tag(RECIPE, "1", key, old)


def error_line(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.slow
def test_reproduces_the_registered_metrics(project: dict[str, Any]) -> None:
    root = project["root"]
    # the user's working copy of the data is edited: reproduce must still use the recorded version
    train = root / "data" / "05_model_input" / "tiny" / "train.jsonl"
    original = train.read_bytes()
    train.write_bytes(original + b'{"text": "an edit nobody recorded", "label": "payroll"}\n')
    status = run(root, "git", "status", "--porcelain")
    try:
        result = cli(project, f"{RECIPE}@candidate", "--json")
    finally:
        train.write_bytes(original)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["reason"] == ""
    assert report["max_abs_diff"] <= 1e-6  # same seed, same machine: measured 0.0
    names = {m["name"] for m in report["metrics"]}
    assert {"accuracy", "macro_f1", "loss", "base.loss"} <= names
    assert all(m["passed"] and m["reproduced"] is not None for m in report["metrics"])
    assert [d["split"] for d in report["data"]] == ["train", "validation", "test"]
    assert all(d["ok"] and d["source"] == "dvc" for d in report["data"])
    assert all(v["equal"] for v in report["lineage"].values())
    assert report["lineage"][Tag.GIT_COMMIT]["reproduced"] == report["commit"]
    # nothing of the user's was touched: working tree, worktree list, registry
    assert not report["kept"] and not Path(report["workdir"]).exists()
    assert run(root, "git", "status", "--porcelain") == status
    assert len(run(root, "git", "worktree", "list").splitlines()) == 1
    from adapter_registry.registry.store import AdapterStore

    assert [v.ref for v in AdapterStore(project["uri"]).list_versions(name=RECIPE)] == [f"{RECIPE}/1"]


@pytest.mark.slow
def test_dirty_tree_is_refused_unless_allowed(project: dict[str, Any]) -> None:
    """--allow-dirty gets past the dirty check (here to a data check that stops it before training)."""
    workdir = project["tmp"] / "kept"
    with version_tag(project, Tag.GIT_DIRTY, "true"):
        refused = cli(project, f"{RECIPE}/1")
        assert refused.exit_code == 1
        assert "dirty working tree" in error_line(refused) and "--allow-dirty" in error_line(refused)
        assert not workdir.exists()
        with version_tag(project, Tag.data_md5("validation"), "0" * 32):  # lineage names other data
            allowed = cli(project, f"{RECIPE}/1", "--allow-dirty", "--workdir", str(workdir))
    assert allowed.exit_code == 1
    line = error_line(allowed)
    assert "validation.jsonl" in line and "records " + "0" * 32 in line and "refusing" in line
    # the worktree was made (kept: --workdir) and its DVC reads the original cache and remote
    local = (workdir / ".dvc" / "config.local").read_text()
    assert str(project["root"] / ".dvc-storage") in local and str(project["root"] / ".dvc" / "cache") in local
    assert (workdir / "data" / "05_model_input" / "tiny" / "train.jsonl").is_file()
    assert cli(project, f"{RECIPE}/1", "--workdir", str(workdir)).exit_code == 1  # not empty any more
    run(project["root"], "git", "worktree", "remove", "--force", str(workdir))


@pytest.mark.slow
def test_unknown_version_and_empty_commit_are_refused(project: dict[str, Any]) -> None:
    unknown = cli(project, f"{RECIPE}/9")
    assert unknown.exit_code == 1 and "9" in error_line(unknown)
    with version_tag(project, Tag.GIT_COMMIT, ""):
        empty = cli(project, f"{RECIPE}/1")
    assert empty.exit_code == 1 and "records no code commit" in error_line(empty)
    with version_tag(project, Tag.GIT_COMMIT, "0123456789" * 4):
        missing = cli(project, f"{RECIPE}/1")
    assert missing.exit_code == 1 and "is not in" in error_line(missing)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=project["uri"], registry_uri=project["uri"])
    client.set_model_version_tag(RECIPE, "1", Tag.COMPOSE, json.dumps({"combination_type": "linear"}))
    client.set_model_version_tag(RECIPE, "1", Tag.PARENTS, json.dumps([{"version": "a/1", "weight": 1.0}]))
    try:
        composed = cli(project, f"{RECIPE}/1")
        client.set_model_version_tag(RECIPE, "1", Tag.PARENTS, '{"truncated": true, "head": "[{"}')
        truncated = cli(project, f"{RECIPE}/1")
    finally:
        client.delete_model_version_tag(RECIPE, "1", Tag.COMPOSE)
        client.delete_model_version_tag(RECIPE, "1", Tag.PARENTS)
    assert composed.exit_code == 1 and "composed from registered versions (a/1)" in error_line(composed)
    assert truncated.exit_code == 1 and "(see its lineage)" in error_line(truncated)


@pytest.mark.slow
def test_tampered_data_is_refused(project: dict[str, Any]) -> None:
    """The recorded version's bytes were changed in the DVC cache and the remote: md5 differs, refused."""
    root = project["root"]
    md5 = (
        run(root, "git", "show", "HEAD:data/05_model_input/tiny/train.jsonl.dvc").split("md5: ")[1].split()[0]
    )
    objects = [root / store / "files" / "md5" / md5[:2] / md5[2:] for store in (".dvc/cache", ".dvc-storage")]
    saved = [o.read_bytes() for o in objects]
    for o in objects:
        o.chmod(0o644)
        o.write_bytes(saved[0].replace(b"payroll", b"PAYROLL"))
    try:
        result = cli(project, f"{RECIPE}/1", "--json")
    finally:
        for o, data in zip(objects, saved, strict=True):
            o.write_bytes(data)
    assert result.exit_code == 1 and result.stdout == ""
    line = error_line(result)
    assert "data/05_model_input/tiny/train.jsonl" in line and md5 in line and "refusing" in line
    assert len(run(root, "git", "worktree", "list").splitlines()) == 1  # the temporary worktree is gone


def test_compare_metrics_tolerance_and_missing_metrics() -> None:
    checks = compare_metrics({"a": 1.0, "b": 0.5, "c": 2.0}, {"a": 1.0 + 5e-7, "b": 0.6, "d": 1.0}, 1e-6)
    by_name = {c.name: c for c in checks}
    assert by_name["a"].passed and by_name["a"].diff == pytest.approx(5e-7)
    assert not by_name["b"].passed and by_name["b"].diff == pytest.approx(0.1)
    assert not by_name["c"].passed and by_name["c"].reproduced is None
    assert not by_name["d"].passed and by_name["d"].registered is None
    report = ReproduceReport("x/1", "x", "c" * 40, "/tmp/w", 1e-6, metrics=checks)
    assert not report.passed and "3 metric(s) differ by more than 1e-06" in report.reason
    ok = ReproduceReport(
        "x/1", "x", "c" * 40, "/tmp/w", 1e-6, metrics=[MetricCheck("a", 1.0, 1.0, 0.0, True)]
    )
    assert ok.passed and ok.reason == "" and ok.max_abs_diff == 0.0


def test_reports_are_read_where_the_checked_out_commit_writes_them(tmp_path: Path) -> None:
    assert _reporting_root(tmp_path) == tmp_path / "data" / "08_reporting"  # a commit from before globals.yml
    (tmp_path / "conf" / "base").mkdir(parents=True)
    (tmp_path / "conf" / "local").mkdir()
    assert _reporting_root(tmp_path) == tmp_path / "data" / "08_reporting"  # conf/, but no globals.yml
    (tmp_path / "conf" / "base" / "globals.yml").write_text("reporting_root: out/reports\n")
    assert _reporting_root(tmp_path) == tmp_path / "out" / "reports"
    (tmp_path / "conf" / "local" / "globals.yml").write_text("reporting_root: mine/reports\n")
    assert _reporting_root(tmp_path) == tmp_path / "mine" / "reports"  # local overrides base, as in kedro run
