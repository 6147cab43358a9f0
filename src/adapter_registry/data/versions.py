"""Which version of a dataset file is this? Its md5 as DVC records it, and the git commit whose dvc.lock holds it.

DVC 3 hashes a file as the plain md5 of its bytes (``hash: md5`` in dvc.lock); files recorded by DVC 2 (no
``hash`` key) used md5 of the bytes with CRLF turned into LF, and are hashed that way here. Outputs are
found in ``dvc.lock`` (pipeline stages) and in ``<file>.dvc`` (``dvc add``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from adapter_registry.data.formats import DataError

LOCK_FILE = "dvc.lock"


@dataclass(frozen=True)
class DatasetVersion:
    """A dataset file's identity: path (relative to the repo), md5, and where DVC recorded it."""

    path: str
    md5: str
    tracked: bool
    lock_commit: str | None
    matches_lock: bool


def _relative(path: str | Path, root: Path) -> str:
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(root.resolve())
        except ValueError:
            raise DataError(f"{path}: not inside the repository {root}") from None
    return p.as_posix()


def _outs_in_lock(text: str | None) -> dict[str, tuple[str, str]]:
    """``{path: (md5, hash name)}`` for every stage output in a dvc.lock text."""
    if not text:
        return {}
    lock: Any = yaml.safe_load(text) or {}
    found: dict[str, tuple[str, str]] = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if "md5" in out:
                found[Path(out["path"]).as_posix()] = (out["md5"], out.get("hash", "md5-dos2unix"))
    return found


def _out_in_dvc_file(text: str | None, path: str) -> tuple[str, str] | None:
    """The (md5, hash name) a ``<file>.dvc`` records for the file it sits next to."""
    if not text:
        return None
    outs = (yaml.safe_load(text) or {}).get("outs") or []
    name = Path(path).name
    for out in outs:
        if Path(out.get("path", "")).name == name and "md5" in out:
            return out["md5"], out.get("hash", "md5-dos2unix")
    return None


def _recorded(rel: str, root: Path) -> tuple[str, str, str] | None:
    """(md5, hash name, the file recording it) from the working tree's dvc.lock or ``<rel>.dvc``."""
    lock = root / LOCK_FILE
    if lock.is_file() and rel in (outs := _outs_in_lock(lock.read_text(encoding="utf-8"))):
        return (*outs[rel], LOCK_FILE)
    dvc_file = root / f"{rel}.dvc"
    if dvc_file.is_file() and (out := _out_in_dvc_file(dvc_file.read_text(encoding="utf-8"), rel)):
        return (*out, f"{rel}.dvc")
    return None


def file_md5(path: Path, hash_name: str = "md5") -> str:
    """The md5 DVC gives ``path`` (DVC's own hashing, so the figures agree by construction)."""
    from dvc_data.hashfile.hash import file_md5 as dvc_file_md5

    return dvc_file_md5(str(path), name=hash_name)


def _git(root: Path, *args: str) -> str | None:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else None


def _lock_commit(rel: str, md5: str, record_file: str, root: Path) -> str | None:
    """The newest commit whose ``record_file`` (dvc.lock or ``<rel>.dvc``) records ``md5`` for ``rel``."""
    log = _git(root, "log", "--format=%H", "--", record_file)
    for commit in (log or "").split():
        text = _git(root, "show", f"{commit}:{record_file}")
        in_lock = record_file == LOCK_FILE
        entry = _outs_in_lock(text).get(rel) if in_lock else _out_in_dvc_file(text, rel)
        if entry and entry[0] == md5:
            return commit
    return None


def dataset_version(path: str | Path, repo_root: Path = Path(".")) -> DatasetVersion:
    """The md5 of ``path`` and whether/where DVC recorded it (``repo_root``: the git + DVC repository)."""
    root = Path(repo_root)
    outside = Path(path).is_absolute() and not Path(path).resolve().is_relative_to(root.resolve())
    if outside:  # data outside the project: no DVC record, but its md5 still pins it in the lineage
        if not Path(path).is_file():
            raise DataError(f"{path}: file not found")
        return DatasetVersion(
            str(path), file_md5(Path(path)), tracked=False, lock_commit=None, matches_lock=False
        )
    rel = _relative(path, root)
    file = root / rel
    if not file.is_file():
        raise DataError(f"{rel}: file not found; run `dvc pull {rel}` or `dvc repro`")
    recorded = _recorded(rel, root)
    if recorded is None:
        return DatasetVersion(rel, file_md5(file), tracked=False, lock_commit=None, matches_lock=False)
    lock_md5, hash_name, record_file = recorded
    md5 = file_md5(file, hash_name)
    commit = _lock_commit(rel, md5, record_file, root)
    return DatasetVersion(rel, md5, tracked=True, lock_commit=commit, matches_lock=md5 == lock_md5)


def check_against_lock(paths: Iterable[str | Path], repo_root: Path = Path(".")) -> None:
    """Raise :class:`DataError` naming every DVC-tracked file whose md5 differs from what DVC recorded."""
    root = Path(repo_root)
    problems = []
    for path in paths:
        rel = _relative(path, root)
        file = root / rel
        if not file.is_file():
            problems.append(f"{rel}: file not found; run `dvc pull {rel}` or `dvc repro`")
            continue
        recorded = _recorded(rel, root)
        if recorded is None:
            continue
        lock_md5, hash_name, record_file = recorded
        md5 = file_md5(file, hash_name)
        if md5 != lock_md5:
            problems.append(
                f"{rel}: md5 {md5} differs from {record_file} ({lock_md5}): the file was edited without "
                f"`dvc repro`/`dvc add`; restore it with `dvc checkout {rel}`, or record the edit with "
                f"`dvc repro` (or `dvc add {rel}`) and commit {record_file}"
            )
    if problems:
        raise DataError("\n".join(problems))


def read_version(path: str, md5: str, commit: str, repo_root: Path = Path(".")) -> bytes:
    """The bytes of ``path`` as of ``commit`` through DVC (cache or remote), refused if the md5 differs."""
    import hashlib

    import dvc.api

    data = dvc.api.read(path, repo=str(Path(repo_root).resolve()), rev=commit, mode="rb")
    got = hashlib.md5(data).hexdigest()
    if got != md5:
        raise DataError(
            f"{path}@{commit[:10]}: DVC returned md5 {got}, the lineage records {md5}; refusing it"
        )
    return data
