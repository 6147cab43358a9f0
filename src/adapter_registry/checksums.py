"""sha256 of files and folders, and the comparison of two checksum maps: the one place this project hashes.

Ground floor: imports nothing else of ours. The registry records one sha256 per adapter file and checks them on
upload, pull and serve; ``bases.fingerprint`` hashes a base's weight files with the same function.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of one file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_folder(folder: Path | str) -> dict[str, str]:
    """Relative POSIX path -> sha256 of every file below ``folder``."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def checksum_problem(got: Mapping[str, str], expected: Mapping[str, str]) -> str | None:
    """A one-line description of the first difference between two checksum maps, or None."""
    missing = sorted(set(expected) - set(got))
    if missing:
        return f"file {missing[0]!r} is missing"
    extra = sorted(set(got) - set(expected))
    if extra:
        return f"file {extra[0]!r} is not registered"
    for path in sorted(expected):
        if got[path] != expected[path]:
            return f"file {path!r} has sha256 {got[path][:12]}…, registered {expected[path][:12]}…"
    return None


def files_digest(checksums: Mapping[str, str]) -> str:
    """``sha256:<hex>`` over ``path:sha256`` of every file: one identity for a whole folder's contents."""
    lines = "".join(f"{path}:{checksums[path]}\n" for path in sorted(checksums))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
