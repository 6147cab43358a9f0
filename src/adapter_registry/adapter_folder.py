"""What an adapter folder is: its required files, its weights, its LoRA matrices and their scaling.

Ground floor: imports nothing else of ours (torch and safetensors only inside the functions that read tensors).
The registry (register, pull), ``compat`` and the serving pool all read adapter folders through this module, so
they agree on what a folder must hold and on how a LoRA weight name maps to the module it adapts.

A folder is what ``peft``'s ``save_pretrained`` writes (``adapter_config.json`` and ``adapter_model.safetensors``
or the older ``adapter_model.bin``), plus what this project saves beside it (a model card, a classifier's head,
a closed answer set).

An *Arrow mixture* (``compose: combination_type: arrow``) is laid out for peft's ``create_arrow_model``: each expert
a complete LoRA folder under ``experts/<name>/``, ``arrow.json`` naming them in order with the routing settings
(``top_k``, ``router_temperature``, ``rng_seed``), and at the top the router's ``adapter_config.json`` (peft's
``LoraConfig`` with its ``arrow_config``; it holds no weights of its own). ``training.models`` saves and loads it.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CONFIG_FILE = "adapter_config.json"
ARROW_FILE = "arrow.json"  # an Arrow mixture's experts (sub-folders, in order) and routing settings
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."  # what peft puts before a module path in a saved weight name
LORA_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")
_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.[\w]+)?\.weight$"
)


class AdapterFolderError(ValueError):
    """A folder that is not a usable adapter; the message names the folder and what is wrong."""


def missing_files(folder: Path | str) -> list[str]:
    """The required files ``folder`` lacks (the config; one of the weight files; an Arrow mixture: each expert's),
    [] when it has them."""
    folder = Path(folder)
    missing = [] if (folder / CONFIG_FILE).is_file() else [CONFIG_FILE]
    if (folder / ARROW_FILE).is_file():
        try:
            experts = arrow_experts(folder)
        except AdapterFolderError as exc:
            return [*missing, f"a readable {ARROW_FILE} ({exc})"]
        for name, sub in experts:
            missing += [
                f"{sub.relative_to(folder).as_posix()}/{m} (expert {name})" for m in missing_files(sub)
            ]
        return missing
    if weights_file(folder) is None:
        missing.append(" or ".join(WEIGHT_FILES))
    return missing


def is_arrow(folder: Path | str) -> bool:
    """Whether ``folder`` holds an Arrow mixture (``arrow.json`` beside the router's config)."""
    return (Path(folder) / ARROW_FILE).is_file()


def read_arrow(folder: Path | str) -> dict[str, Any]:
    """The parsed ``arrow.json`` of an Arrow mixture: ``experts`` (adapter name, sub-folder, registered version),
    ``top_k``, ``router_temperature``, ``rng_seed``, ``peft`` (the version that built it)."""
    path = Path(folder) / ARROW_FILE
    try:
        spec: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterFolderError(f"{path}: {exc}") from exc
    if not isinstance(spec.get("experts"), list) or not spec["experts"]:
        raise AdapterFolderError(f"{path}: 'experts' must be a non-empty list of {{adapter, folder}}")
    return spec


def arrow_experts(folder: Path | str) -> list[tuple[str, Path]]:
    """(adapter name, folder) of each expert of an Arrow mixture, in routing order."""
    folder = Path(folder)
    out = []
    for expert in read_arrow(folder)["experts"]:
        sub = (folder / str(expert.get("folder", ""))).resolve()
        if not str(expert.get("folder", "")) or folder.resolve() not in sub.parents:
            raise AdapterFolderError(
                f"{folder / ARROW_FILE}: expert folder {expert.get('folder')!r} is not inside it"
            )
        out.append((str(expert.get("adapter", "")), folder / str(expert["folder"])))
    return out


def symlinks(folder: Path | str) -> list[str]:
    """Relative POSIX paths of every symbolic link below ``folder``, sorted; links are listed, never followed.

    Registration refuses a folder that holds any (it would upload the link's target, anything on the machine) and
    ``pull`` refuses to write where one points.
    """
    folder = Path(folder)
    found = []
    for root, dirs, files in os.walk(folder):  # followlinks=False: a linked folder is listed, not entered
        for name in (*dirs, *files):
            path = Path(root) / name
            if path.is_symlink():
                found.append(path.relative_to(folder).as_posix())
    return sorted(found)


def weights_file(folder: Path | str) -> Path | None:
    """The adapter's weight file (safetensors preferred), or None."""
    return next((Path(folder) / n for n in WEIGHT_FILES if (Path(folder) / n).is_file()), None)


def weights_digest(checksums: dict[str, str]) -> str:
    """``sha256:<hex>`` of the adapter's weight file as registered ("" when none is recorded): what every served
    response names as its digest."""
    name = next((n for n in WEIGHT_FILES if n in checksums), None)
    return f"sha256:{checksums[name]}" if name else ""


def read_config(folder: Path | str) -> dict[str, Any]:
    """The parsed ``adapter_config.json``."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise AdapterFolderError(f"{folder} is not an adapter folder: it has no {CONFIG_FILE}")
    config: dict[str, Any] = json.loads(path.read_text())
    return config


def read_weights(folder: Path | str) -> dict[str, torch.Tensor]:
    """Every tensor of the adapter's weight file, on the CPU."""
    path = weights_file(folder)
    if path is None:
        raise AdapterFolderError(f"{folder} holds no {' or '.join(WEIGHT_FILES)}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    import torch

    return dict(torch.load(path, map_location="cpu", weights_only=True))


def weight_shapes(folder: Path | str) -> dict[str, tuple[int, ...]]:
    """Weight name -> shape, read from the safetensors header without loading the tensors."""
    path = Path(folder) / WEIGHT_FILES[0]
    if not path.is_file():
        raise AdapterFolderError(f"adapter folder {str(folder)!r} has no {WEIGHT_FILES[0]}")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118


@dataclass(frozen=True)
class LoraKey:
    """One saved LoRA weight name, split into the module it adapts and its part (lora_A, lora_B, ...)."""

    module: str  # module path in the base model, without peft's ``base_model.model.`` prefix
    part: str  # one of LORA_PARTS


def parse_lora_key(key: str) -> LoraKey | None:
    """The module and part of a saved LoRA weight name; None for any other weight."""
    match = _LORA_KEY.match(key)
    return LoraKey(match["module"], match["part"]) if match else None


def lora_modules(keys: Any) -> dict[str, dict[str, str]]:
    """Module path -> {part -> weight name} of every LoRA weight among ``keys`` (other weights are skipped)."""
    modules: dict[str, dict[str, str]] = {}
    for key in keys:
        parsed = parse_lora_key(key)
        if parsed is not None:
            modules.setdefault(parsed.module, {})[parsed.part] = key
    return modules


def lora_scaling(config: dict[str, Any], module: str, rank: int) -> float:
    """The factor peft multiplies ``B @ A`` by in ``module``: alpha / r (alpha / sqrt(r) with rsLoRA),
    with the config's ``alpha_pattern`` applied as peft applies it."""
    from peft.utils.other import get_pattern_key

    patterns = config.get("alpha_pattern") or {}
    alpha = patterns.get(get_pattern_key(list(patterns), module), config.get("lora_alpha", 8))
    return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)
