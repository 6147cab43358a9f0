"""The identity of a base model's weights: a sha256 over its weight files, cached by size and mtime.

A converted offline base (see ``resolve``) carries ``base_identity.json`` naming the fingerprint of the file it
came from (the GGUF's sha256); that name is honoured only while the converted weights still hash to what the
converter recorded, so an edited folder can never pass for the original.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from adapter_registry import checksums

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
IDENTITY_FILE = "base_identity.json"
_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of one weight file, memoised per (path, size, mtime) for this process (bases are GBs)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _CACHE:
        _CACHE[key] = checksums.sha256_file(path)
    return _CACHE[key]


def weight_files(folder: Path | str) -> list[Path]:
    """The weight files of a model folder, sorted by name (sub-folders excluded)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def weights_digest(folder: Path | str) -> str:
    """sha256 over ``name:sha256`` of every weight file: changes when any weight byte changes."""
    files = weight_files(folder)
    if not files:
        raise FileNotFoundError(
            f"{folder} holds no weight files ({', '.join(WEIGHT_SUFFIXES)}): not a model folder"
        )
    lines = "".join(f"{p.name}:{sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def fingerprint_folder(folder: Path | str) -> str:
    """``sha256:<hex>`` identity of the weights in ``folder``."""
    folder = Path(folder)
    digest = weights_digest(folder)
    identity = folder / IDENTITY_FILE
    if identity.is_file():
        recorded = json.loads(identity.read_text())
        if recorded.get("weights_digest") == digest and recorded.get("fingerprint"):
            return str(recorded["fingerprint"])
    return f"sha256:{digest}"
