"""What a registration must be given, checked before anything is created, and the tags its version carries.

Pure checks of the inputs of ``AdapterStore.register_adapter``: the model name, the adapter folder (its required
files and no symbolic link, see ``adapter_folder``, and file names a tag key can hold), tags, metrics and extra artifacts. A problem is a
``RegistryError`` naming the input; nothing has been written yet when it is raised.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from adapter_registry.adapter_folder import missing_files, symlinks
from adapter_registry.checksums import sha256_folder
from adapter_registry.registry.entities import ADAPTER_ARTIFACT, RegistryError, Tag

_SAFE_RELATIVE_PATH = re.compile(r"^[\w.\- /]+$")  # what MLflow accepts in a tag key
_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]{0,255}$")
_REGISTRATION_ID = re.compile(r"^[\w.\-:/]{1,250}$")


def check_registration(
    model_name: str,
    adapter_dir: Path,
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
    artifacts: Mapping[str, Path],
    registration_id: str | None = None,
) -> dict[str, str]:
    """Refuse bad inputs; returns the sha256 of every adapter file (relative path -> hex)."""
    _check_name(model_name)
    if registration_id is not None and not (
        isinstance(registration_id, str) and _REGISTRATION_ID.fullmatch(registration_id)
    ):
        raise RegistryError(
            "INVALID_INPUT",
            f"registration_id {registration_id!r} must be 1 to 250 letters, digits, '_', '-', '.', ':' or '/'",
        )
    checksums = _check_adapter_dir(adapter_dir)
    _check_inputs(tags, metrics, artifacts)
    return checksums


def version_tags_of(
    tags: Mapping[str, str],
    checksums: Mapping[str, str],
    metrics: Mapping[str, float],
    run_id: str,
    registration_id: str | None = None,
) -> dict[str, str]:
    """The tags of a new version: the caller's, the files' sha256, the metrics, the run and the caller's
    registration id (its stage is an alias)."""
    return {
        **dict(tags),
        **{Tag.sha256(path): digest for path, digest in checksums.items()},
        **{Tag.metric(name): repr(float(value)) for name, value in metrics.items()},
        Tag.RUN_ID: run_id,
        **({Tag.REGISTRATION_ID: registration_id} if registration_id else {}),
    }


def _check_name(model_name: str) -> None:
    if not isinstance(model_name, str) or not _NAME.match(model_name):
        raise RegistryError(
            "INVALID_INPUT", f"model_name {model_name!r} must be letters, digits, '_', '-' or '.'"
        )


def _check_adapter_dir(adapter_dir: Path) -> dict[str, str]:
    if not adapter_dir.is_dir():
        raise RegistryError("INVALID_ADAPTER", f"adapter_dir {str(adapter_dir)!r} is not a folder")
    _refuse_links(f"adapter_dir {str(adapter_dir)!r}", adapter_dir, "INVALID_ADAPTER")
    missing = missing_files(adapter_dir)
    if missing:
        raise RegistryError("INVALID_ADAPTER", f"adapter_dir {str(adapter_dir)!r} lacks {', '.join(missing)}")
    checksums = sha256_folder(adapter_dir)
    odd = [p for p in checksums if not _SAFE_RELATIVE_PATH.match(p)]
    if odd:
        raise RegistryError(
            "INVALID_ADAPTER", f"adapter file names {odd} use characters a tag key cannot hold"
        )
    return checksums


def _check_inputs(
    tags: Mapping[str, str], metrics: Mapping[str, float], artifacts: Mapping[str, Path]
) -> None:
    bad_tags = {k: v for k, v in tags.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad_tags:
        raise RegistryError("INVALID_INPUT", f"tag values must be strings; got {bad_tags!r}")
    reserved = [
        k
        for k in tags
        if k.startswith((Tag.sha256(""), Tag.metric("")))
        or k in (Tag.STAGE, Tag.ARCHIVED, Tag.RUN_ID, Tag.REGISTRATION_ID)
    ]
    if reserved:
        raise RegistryError("INVALID_INPUT", f"tags {reserved} are written by the store; leave them out")
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RegistryError("INVALID_INPUT", f"metric {name!r} must be a number; got {value!r}")
    for name, path in artifacts.items():
        parts = PurePosixPath(name).parts
        if not parts or parts[0] == ADAPTER_ARTIFACT or ".." in parts or name.startswith("/"):
            raise RegistryError(
                "INVALID_INPUT", f"artifact name {name!r} must be a relative path outside adapter/"
            )
        if not Path(path).exists():
            raise RegistryError("INVALID_INPUT", f"artifact {name!r}: {str(path)!r} does not exist")
        if Path(path).is_dir():
            _refuse_links(f"artifact {name!r}: {str(path)!r}", Path(path), "INVALID_INPUT")


def _refuse_links(what: str, folder: Path, code: str) -> None:
    links = symlinks(folder)
    if links:
        raise RegistryError(
            code,
            f"{what} holds symbolic links: {', '.join(links)}. Fix: registering would upload their targets; "
            "copy the files in (cp -L) or remove the links",
        )
