"""Where a result came from: the git state of the project and the versions of the libraries that made it."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

LIBRARIES = (
    "adapter-registry",
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "mlflow",
    "kedro",
    "great_expectations",
    "dvc",
    "numpy",
    "scikit-learn",
)


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state(root: Path | str = ".") -> tuple[str, bool]:
    """(HEAD commit or "" outside git, whether tracked files differ from it)."""
    root = Path(root)
    commit = _git(root, "rev-parse", "HEAD") or ""
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return commit, bool(status)


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = ""
    return versions
