"""Dataset versions against a real git + DVC repository in tmp_path."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from adapter_registry.data.formats import DataError
from adapter_registry.data.versions import check_against_lock, dataset_version, read_version

STAGE = "import shutil; shutil.copy('data/raw.jsonl', 'data/split.jsonl')"


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout


def commit(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD").strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """git init + dvc init; a stage (dvc.lock) producing data/split.jsonl and a `dvc add`-ed data/extra.jsonl."""
    from dvc.repo import Repo

    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.chdir(tmp_path)  # DVC's Python API resolves stage paths against the working directory
    git(tmp_path, "init", "-q")
    dvc = Repo.init(str(tmp_path))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.jsonl").write_text('{"text": "a", "label": "x"}\n')
    (tmp_path / "data" / "extra.jsonl").write_text('{"text": "b", "label": "y"}\n')
    dvc.stage.add(
        name="split", cmd=f'python -c "{STAGE}"', deps=["data/raw.jsonl"], outs=["data/split.jsonl"]
    )
    dvc.reproduce()
    dvc.add("data/extra.jsonl")
    dvc.close()
    commit(tmp_path, "data v1")
    return tmp_path


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_version_of_a_stage_output(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD").strip()
    version = dataset_version("data/split.jsonl", repo)
    assert version.md5 == md5(repo / "data" / "split.jsonl")  # DVC 3's md5 is the md5 of the bytes
    assert (version.tracked, version.lock_commit, version.matches_lock) == (True, head, True)
    assert dataset_version(repo / "data" / "split.jsonl", repo) == version  # absolute paths too


def test_lock_commit_is_the_commit_that_recorded_the_md5(repo: Path) -> None:
    from dvc.repo import Repo

    first = git(repo, "rev-parse", "HEAD").strip()
    v1_bytes = (repo / "data" / "split.jsonl").read_bytes()
    (repo / "data" / "raw.jsonl").write_text('{"text": "c", "label": "z"}\n')
    with Repo(str(repo)) as dvc:
        dvc.reproduce()
    second = commit(repo, "data v2")
    (repo / "README").write_text("x")
    commit(repo, "unrelated change")
    assert dataset_version("data/split.jsonl", repo).lock_commit == second
    (repo / "data" / "split.jsonl").write_bytes(v1_bytes)  # the old bytes, with today's lock
    old = dataset_version("data/split.jsonl", repo)
    assert (old.lock_commit, old.matches_lock) == (first, False)


def test_dvc_add_file_and_untracked_file(repo: Path) -> None:
    extra = dataset_version("data/extra.jsonl", repo)
    assert extra.tracked and extra.matches_lock and extra.lock_commit is not None
    (repo / "data" / "loose.jsonl").write_text("{}\n")
    loose = dataset_version("data/loose.jsonl", repo)
    assert (loose.tracked, loose.lock_commit, loose.matches_lock) == (False, None, False)
    check_against_lock(["data/loose.jsonl", "data/extra.jsonl", "data/split.jsonl"], repo)


def test_md5_no_longer_matching_dvc_lock(repo: Path) -> None:
    (repo / "data" / "split.jsonl").write_text('{"text": "edited by hand", "label": "x"}\n')
    version = dataset_version("data/split.jsonl", repo)
    assert version.tracked and not version.matches_lock and version.lock_commit is None
    with pytest.raises(
        DataError,
        match=r"data/split\.jsonl: md5 \w+ differs from dvc\.lock \(\w+\): the file was "
        r"edited without `dvc repro`/`dvc add`; restore it with `dvc checkout",
    ):
        check_against_lock(["data/split.jsonl"], repo)


def test_md5_no_longer_matching_a_dvc_file(repo: Path) -> None:
    (repo / "data" / "extra.jsonl").write_text("edited\n")
    with pytest.raises(DataError, match=r"data/extra\.jsonl: md5 \w+ differs from data/extra\.jsonl\.dvc"):
        check_against_lock(["data/extra.jsonl"], repo)


def test_missing_and_outside_files(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    with pytest.raises(DataError, match=r"data/gone\.jsonl: file not found; run `dvc pull data/gone\.jsonl`"):
        dataset_version("data/gone.jsonl", repo)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with pytest.raises(DataError, match=r"x\.jsonl: file not found"):
        dataset_version(elsewhere / "x.jsonl", repo)
    (elsewhere / "x.jsonl").write_text("a row\n")  # data outside the project: untracked, pinned by its md5
    outside = dataset_version(elsewhere / "x.jsonl", repo)
    assert (outside.tracked, outside.lock_commit, outside.path) == (False, None, str(elsewhere / "x.jsonl"))
    assert outside.md5 == hashlib.md5(b"a row\n").hexdigest()


def test_read_version_through_dvc_and_refuse_a_wrong_md5(repo: Path) -> None:
    version = dataset_version("data/split.jsonl", repo)
    assert (
        read_version(version.path, version.md5, version.lock_commit or "", repo)
        == (repo / "data" / "split.jsonl").read_bytes()
    )
    with pytest.raises(DataError, match=r"the lineage records 0+; refusing it"):
        read_version(version.path, "0" * 32, version.lock_commit or "", repo)
