"""Reproduce a registered adapter from its lineage: same code, same data, same recipe, compare the metrics.

``reproduce(store, "NAME/VERSION")``:

1. resolves the version and refuses when its recorded code commit is empty, unknown to the repository, or was
   trained from a dirty tree (``allow_dirty`` proceeds with a warning), and when it was composed from other
   registered versions rather than trained (reproduce its parents);
2. checks that commit out with ``git worktree add --detach`` in its own folder (the user's working tree is never
   touched), and points the worktree's DVC at the original repository's cache and remotes (``.dvc/config.local``:
   a local remote such as ``../.dvc-storage`` is a path relative to the original checkout);
3. fetches exactly the recorded data versions (``dvc.api.read`` of each path at the commit whose ``dvc.lock`` or
   ``.dvc`` file recorded it: DVC cache first, then the remote; ``dvc repro`` in the worktree, with its ``src``
   first on PYTHONPATH, when neither holds it), writes them into the worktree and refuses when any md5 differs
   from the one the lineage records;
4. re-runs the recipe there (``kedro run --namespaces RECIPE``; the worktree's ``src`` first on PYTHONPATH, its
   own sqlite MLflow registry, so the user's registry is not touched);
5. compares the new ``flat_metrics`` with the registered ones, metric by metric, under an absolute tolerance.

The default tolerance, 1e-6, is for the same seed on the same machine and library versions, where this
project's training is bit-for-bit deterministic on CPU (measured difference: 0.0); pass a larger one to compare
across machines, thread counts or library versions (floating-point reductions then differ in the last bits
and, after a few optimiser steps, in the 4th-6th decimal).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_TOLERANCE = 1e-6
LOG_FILE = "reproduce.log"  # kedro's output, inside the worktree
REGISTRY_FILE = "reproduce-mlflow.db"  # the worktree's own MLflow registry
RUN_ENV = {
    "HF_HUB_OFFLINE": "1",
    "KEDRO_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


class ReproduceError(Exception):
    """Reproduction refused or failed before metrics could be compared; the message says why, on one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class DataCheck:
    split: str
    path: str
    recorded_md5: str
    fetched_md5: str
    commit: str
    source: str  # "dvc" (cache or remote) | "dvc repro"

    @property
    def ok(self) -> bool:
        return self.recorded_md5 == self.fetched_md5


@dataclass(frozen=True)
class MetricCheck:
    name: str
    registered: float | None
    reproduced: float | None
    diff: float | None  # reproduced - registered
    passed: bool


@dataclass
class ReproduceReport:
    version: str
    recipe: str
    commit: str
    workdir: str
    tolerance: float
    data: list[DataCheck] = field(default_factory=list)
    metrics: list[MetricCheck] = field(default_factory=list)
    lineage: dict[str, dict[str, Any]] = field(default_factory=dict)  # tag: registered, reproduced, equal
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    kept: bool = True

    @property
    def failed_metrics(self) -> list[MetricCheck]:
        return [m for m in self.metrics if not m.passed]

    @property
    def lineage_mismatches(self) -> list[str]:
        return [k for k, v in self.lineage.items() if not v["equal"]]

    @property
    def passed(self) -> bool:
        return bool(self.metrics) and not self.failed_metrics and not self.lineage_mismatches

    @property
    def max_abs_diff(self) -> float | None:
        diffs = [abs(m.diff) for m in self.metrics if m.diff is not None and not math.isnan(m.diff)]
        return max(diffs) if diffs else None

    @property
    def reason(self) -> str:
        """One line: why it did not reproduce ("" when it did)."""
        if self.passed:
            return ""
        parts = []
        if self.failed_metrics:
            shown = ", ".join(
                f"{m.name} {_fmt(m.registered)} -> {_fmt(m.reproduced)}" for m in self.failed_metrics[:4]
            )
            more = len(self.failed_metrics) - 4
            parts.append(
                f"{len(self.failed_metrics)} metric(s) differ by more than {self.tolerance:g}: {shown}"
                + (f" (+{more} more)" if more > 0 else "")
            )
        if self.lineage_mismatches:
            parts.append(f"lineage differs: {', '.join(self.lineage_mismatches)}")
        return "; ".join(parts) or "no metrics to compare"

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "recipe": self.recipe, "commit": self.commit, "workdir": self.workdir,
            "kept": self.kept, "tolerance": self.tolerance, "passed": self.passed, "reason": self.reason,
            "max_abs_diff": self.max_abs_diff, "seconds": round(self.seconds, 1),
            "data": [{**asdict(d), "ok": d.ok} for d in self.data],
            "metrics": [asdict(m) for m in self.metrics], "lineage": self.lineage, "warnings": self.warnings,
        }  # fmt: skip


def _fmt(value: float | None) -> str:
    return "missing" if value is None else f"{value:.10g}"


# ------------------------------------------------------------------------------------------------ helpers
def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def _git(root: Path, *args: str) -> str:
    done = _run(["git", "-C", str(root), *args], root)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise ReproduceError("GIT", f"git {' '.join(args)}: {last}")
    return done.stdout.strip()


def repo_root(start: Path | str = ".") -> Path:
    """The git top level holding ``start``."""
    try:
        return Path(_git(Path(start).resolve(), "rev-parse", "--show-toplevel"))
    except ReproduceError:
        raise ReproduceError("NO_REPO", f"{Path(start).resolve()} is not inside a git repository") from None


def compare_metrics(
    registered: dict[str, float], reproduced: dict[str, float], tolerance: float
) -> list[MetricCheck]:
    """One check per metric either side knows; a metric missing on one side fails."""
    checks = []
    for name in sorted(set(registered) | set(reproduced)):
        old, new = registered.get(name), reproduced.get(name)
        if old is None or new is None:
            checks.append(MetricCheck(name, old, new, None, False))
            continue
        old, new = float(old), float(new)
        both_nan = math.isnan(old) and math.isnan(new)
        diff = 0.0 if both_nan else new - old
        checks.append(MetricCheck(name, old, new, diff, both_nan or abs(diff) <= tolerance))
    return checks


def _point_dvc_at_original(worktree: Path, original: Path) -> None:
    """The worktree's DVC uses the original checkout's cache and remotes (written to ``.dvc/config.local``)."""
    from dvc.config import Config
    from dvc.repo import Repo

    if not (worktree / ".dvc").is_dir():
        return
    repo = Repo(str(original))
    try:
        remotes = {name: dict(conf) for name, conf in repo.config["remote"].items()}
        cache_dir = getattr(repo.cache, "local_cache_dir", None) or str(original / ".dvc" / "cache")
    finally:
        repo.close()
    config = Config(dvc_dir=str(worktree / ".dvc"), validate=False)
    with config.edit("local") as local:
        local.setdefault("cache", {})["dir"] = cache_dir
        for name, conf in remotes.items():
            url = str(conf.get("url", ""))
            if url and "://" not in url and not Path(url).is_absolute():
                url = str((original / ".dvc" / url).resolve())
            if url:
                local.setdefault("remote", {}).setdefault(name, {})["url"] = url


def _fetch(worktree: Path, original: Path, path: str, md5: str, commit: str) -> tuple[str, str]:
    """Write the recorded version of ``path`` into the worktree; (md5 DVC gives the written file, source)."""
    import dvc.api

    from adapter_registry.data.versions import dataset_version, file_md5

    target = worktree / path
    target.parent.mkdir(parents=True, exist_ok=True)
    source = "dvc"
    try:
        data = dvc.api.read(path, repo=str(original), rev=commit, mode="rb")
        target.write_bytes(data)
    except Exception as exc:  # not in the cache nor the remote: regenerate when a stage makes it
        lock = worktree / "dvc.lock"
        if not lock.is_file() or path not in lock.read_text(encoding="utf-8"):
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ReproduceError(
                "DATA",
                f"{path}@{commit[:10]}: DVC could not fetch it from the cache or the remote ({first}); "
                f"run `dvc push` where it was trained",
            ) from None
        done = _run([sys.executable, "-m", "dvc", "repro"], worktree, _recorded_code_env(worktree))
        if done.returncode != 0 or not target.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ReproduceError(
                "DATA", f"{path}: not in the DVC cache or remote, and `dvc repro` failed: {last}"
            ) from None
        source = "dvc repro"
    try:
        got = dataset_version(path, worktree).md5  # with the hash DVC recorded (md5, or legacy dos2unix)
    except Exception:
        got = file_md5(target)
    if got != md5 and hashlib.md5(target.read_bytes()).hexdigest() == md5:
        got = md5
    return got, source


def _recorded_code_env(worktree: Path) -> dict[str, str]:
    """The run environment with the worktree's ``src`` first on PYTHONPATH: the recorded code, not the editable
    install of the user's checkout (the DVC stages of an older commit import modules that have since moved)."""
    env = {**os.environ, **RUN_ENV}
    src = worktree / "src"
    if src.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH", "")]))
    return env


def _kedro_env(worktree: Path) -> dict[str, str]:
    env = _recorded_code_env(worktree)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{worktree / REGISTRY_FILE}"
    if (worktree / "conf" / "logging.yml").is_file():
        env["KEDRO_LOGGING_CONFIG"] = "conf/logging.yml"
    else:
        env.pop("KEDRO_LOGGING_CONFIG", None)
    return env


def _last_error_line(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"


# ------------------------------------------------------------------------------------------------ main
def _reporting_root(worktree: Path) -> Path:
    """Where the checked-out commit's catalog writes reports: its globals as Kedro merges them (``conf/base``, then
    ``conf/local``), else the default of commits from before ``globals.yml``."""
    from kedro.config import OmegaConfigLoader

    conf = worktree / "conf"
    configured = (
        OmegaConfigLoader(str(conf), base_env="base", default_run_env="local")["globals"]
        if conf.is_dir()
        else {}
    )
    return worktree / (configured.get("reporting_root") or "data/08_reporting")


def _refuse_composed(ref: str, parents_tag: str | None) -> None:
    """A composed version has no training to re-run: name its parents (the tag may be truncated or malformed)."""
    try:
        parents = json.loads(parents_tag or "[]")
        names = ", ".join(str(p["version"]) for p in parents) if isinstance(parents, list) else ""
    except (ValueError, KeyError, TypeError):
        names = ""
    raise ReproduceError(
        "COMPOSED",
        f"{ref} was composed from registered versions ({names or 'see its lineage'}), not trained: reproduce "
        "each parent instead; the composition itself is recorded in its lineage (adapter-registry lineage)",
    )


def reproduce(
    store: Any,
    ref: str,
    repo: Path | str = ".",
    workdir: Path | str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    allow_dirty: bool = False,
    keep: bool | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> ReproduceReport:
    """Re-run ``ref``'s recipe on its recorded code and data; see the module docstring.

    ``keep``: leave the worktree in place afterwards (default: kept when ``workdir`` is given, removed when it
    is a temporary folder). Raises :class:`ReproduceError` (or the store's ``RegistryError``) when it refuses
    or cannot run; a run whose metrics differ returns a report with ``passed`` False.
    """
    from adapter_registry.provenance import library_versions
    from adapter_registry.registry.entities import Tag
    from adapter_registry.registry.lineage import datasets_of

    if not tolerance >= 0:
        raise ReproduceError("INVALID_INPUT", f"--tolerance must be >= 0 (got {tolerance})")
    started = time.perf_counter()
    version = store.resolve(ref)
    tags = version.tags
    warnings: list[str] = []
    if tags.get(Tag.COMPOSE):
        _refuse_composed(version.ref, tags.get(Tag.PARENTS))
    commit = tags.get(Tag.GIT_COMMIT, "")
    recipe = tags.get(Tag.RECIPE_NAME, "")
    if not commit:
        raise ReproduceError(
            "NO_COMMIT",
            f"{version.ref} records no code commit ({Tag.GIT_COMMIT} is empty): it was "
            "trained outside git, so its code cannot be checked out",
        )
    if not recipe:
        raise ReproduceError("NO_RECIPE", f"{version.ref} records no recipe name ({Tag.RECIPE_NAME})")
    dirty = tags.get(Tag.GIT_DIRTY, "")
    if dirty != "false":
        what = "a dirty working tree" if dirty == "true" else "a working tree of unknown state"
        message = (
            f"{version.ref} was trained from {what} at {commit[:10]} "
            "(uncommitted changes are not in the commit)"
        )
        if not allow_dirty:
            raise ReproduceError(
                "DIRTY", f"{message}; pass --allow-dirty to re-run the committed code anyway"
            )
        warnings.append(message + "; reproducing the committed code anyway (--allow-dirty)")
    datasets = datasets_of(version)
    for d in datasets:
        if not d.md5 or not d.path:
            raise ReproduceError("DATA", f"{version.ref}: the {d.split} split records no path or md5")
        if not d.commit:
            raise ReproduceError(
                "DATA",
                f"{version.ref}: {d.path} (md5 {d.md5}) was not recorded by DVC in any commit when "
                "it was trained, so that exact version cannot be fetched",
            )
    if not datasets:
        warnings.append(
            f"{version.ref} records no data versions; the recipe's data files are used as committed"
        )
    now = library_versions()
    for name, current in now.items():
        recorded = tags.get(Tag.library(name))
        if recorded and current and recorded != current and name != "adapter-registry":
            warnings.append(f"{name} {current} here, {recorded} when trained: metrics may differ slightly")

    original = repo_root(repo)
    try:
        commit = _git(original, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    except ReproduceError:
        raise ReproduceError(
            "NO_COMMIT", f"commit {commit[:10]} of {version.ref} is not in {original}; `git fetch` it first"
        ) from None
    for d in datasets:
        if _run(
            ["git", "-C", str(original), "cat-file", "-e", f"{d.commit}^{{commit}}"], original
        ).returncode:
            raise ReproduceError(
                "NO_COMMIT", f"commit {d.commit[:10]} recording {d.path} is not in {original}; `git fetch` it"
            )

    temporary = workdir is None
    if workdir is None:
        worktree = Path(tempfile.mkdtemp(prefix=f"ar-reproduce-{version.name}-{version.version}-"))
    else:
        worktree = Path(workdir).resolve()
        if worktree.exists() and (not worktree.is_dir() or any(worktree.iterdir())):
            raise ReproduceError("WORKDIR", f"--workdir {worktree} exists and is not empty")
    keep = (not temporary) if keep is None else keep
    report = ReproduceReport(
        version.ref, recipe, commit, str(worktree), tolerance, warnings=warnings, kept=keep
    )
    log(f"checking out {commit[:10]} in {worktree}")
    _git(original, "worktree", "add", "--detach", str(worktree), commit)
    try:
        _reproduce_in(worktree, original, version, recipe, datasets, report, log)
    finally:
        if not keep:
            _run(["git", "-C", str(original), "worktree", "remove", "--force", str(worktree)], original)
            shutil.rmtree(worktree, ignore_errors=True)
            _run(["git", "-C", str(original), "worktree", "prune"], original)
        report.seconds = time.perf_counter() - started
    return report


def _reproduce_in(
    worktree: Path,
    original: Path,
    version: Any,
    recipe: str,
    datasets: tuple[Any, ...],
    report: ReproduceReport,
    log: Callable[[str], None],
) -> None:
    from adapter_registry.registry.entities import Tag
    from adapter_registry.registry.store import AdapterStore

    if not (worktree / "pipelines" / f"{recipe}.yaml").is_file():
        raise ReproduceError("NO_RECIPE", f"commit {report.commit[:10]} has no pipelines/{recipe}.yaml")
    _point_dvc_at_original(worktree, original)
    for d in datasets:
        log(f"fetching {d.path} ({d.md5}) as of {d.commit[:10]}")
        got, source = _fetch(worktree, original, d.path, d.md5, d.commit)
        check = DataCheck(d.split, d.path, d.md5, got, d.commit, source)
        report.data.append(check)
        if not check.ok:
            raise ReproduceError(
                "DATA_MD5",
                f"{d.path}@{d.commit[:10]}: DVC returned md5 {got}, the lineage of "
                f"{version.ref} records {d.md5}; refusing to train on different data",
            )

    log(f"running `kedro run --namespaces {recipe}` in {worktree}")
    env = _kedro_env(worktree)
    done = _run([sys.executable, "-m", "kedro", "run", "--namespaces", recipe], worktree, env)
    output = done.stdout + done.stderr
    (worktree / LOG_FILE).write_text(output)
    evaluation = _reporting_root(worktree) / recipe / "evaluation.json"
    if done.returncode != 0 or not evaluation.is_file():
        raise ReproduceError(
            "RUN_FAILED",
            f"`kedro run --namespaces {recipe}` failed (exit {done.returncode}): "
            f"{_last_error_line(output)} (full log: {worktree / LOG_FILE})",
        )
    reproduced = json.loads(evaluation.read_text())["flat_metrics"]
    report.metrics = compare_metrics(version.metrics, reproduced, report.tolerance)

    new = AdapterStore(env["MLFLOW_TRACKING_URI"]).list_versions(name=version.name)
    if new:
        new_tags = new[0].tags
        keys = [Tag.RECIPE_HASH, Tag.BASE_FINGERPRINT, Tag.GIT_COMMIT]
        keys += [k for k in version.tags if k.startswith("ar.data.") and k.endswith((".path", ".md5"))]
        for key in keys:
            old_value, new_value = version.tags.get(key, ""), new_tags.get(key, "")
            report.lineage[key] = {
                "registered": old_value,
                "reproduced": new_value,
                "equal": old_value == new_value,
            }
    else:
        report.warnings.append("the re-run registered no version; lineage tags not compared")
