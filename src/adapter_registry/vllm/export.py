"""A registered version as a folder vLLM loads as it is: ``adapter-registry export REF DIR --format vllm``.

The folder holds:

- ``adapter_config.json``: peft's config with ``base_model_name_or_path`` naming the base as vLLM knows it (the
  hub id; with ``revision`` for a hub base), and no ``modules_to_save``;
- ``adapter_model.safetensors``: the registered weights (an older ``adapter_model.bin`` is converted);
- ``serving.json``: the serving contract (prompt template, decoding, answer set, budget) when the version has
  one, and ``answers.json`` for a version registered before contracts;
- ``README.md``: how to serve it with vLLM and how to ask it as evaluation did; ``MODEL_CARD.md``: the version's
  model card; ``export.json``: what was exported (version, weights digest, sha256 of every exported file).

An adapter vLLM cannot take is refused before anything is written, with every failed rule, its reason and the
nearest fix (``vllm.rules``). The source files are pulled with their registered sha256 checked
(``AdapterStore.pull``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_registry.adapter_folder import (
    CONFIG_FILE,
    WEIGHT_FILES,
    read_config,
    weight_shapes,
    weights_file,
)
from adapter_registry.bases.resolve import CONVERTED_FROM_GGUF, OFFLINE_HUB_IDS
from adapter_registry.checksums import sha256_folder
from adapter_registry.contract import CONTRACT_FILE, LEGACY_ANSWERS_FILE, ContractError, ServingContract
from adapter_registry.registry.entities import AdapterVersion, Tag
from adapter_registry.serving.sync import weights_digest
from adapter_registry.vllm.request_body import request_body
from adapter_registry.vllm.rules import (
    DEFAULT_MAX_LORA_RANK,
    AdapterFacts,
    Finding,
    check,
    needed_max_lora_rank,
    refusal,
)

if TYPE_CHECKING:
    from adapter_registry.registry.store import AdapterStore

EXPORT_MANIFEST = "export.json"
MODEL_CARD = "MODEL_CARD.md"


class ExportRefused(Exception):
    """vLLM cannot take this adapter; ``findings`` name every failed rule and its fix."""

    def __init__(self, ref: str, findings: list[Finding]) -> None:
        super().__init__(f"{ref} cannot be served by vLLM: {refusal(findings)}")
        self.ref = ref
        self.findings = findings


@dataclass(frozen=True)
class ServedBase:
    """The base as ``adapter_config.json`` names it for vLLM, and what a user must know about it."""

    name_or_path: str
    revision: str = ""
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class VllmCheck:
    """vLLM's rules applied to one version, with the notes an exporter or a promoter should read."""

    ref: str
    lora_name: str  # NAME@sha256:<hex of the registered weights>
    findings: tuple[Finding, ...]
    base: ServedBase
    warnings: tuple[str, ...] = ()
    max_rank: int = 0

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def reason(self) -> str:
        return refusal(self.findings) or "every rule passed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.ref, "engine": "vllm", "ok": self.ok, "lora_name": self.lora_name,
            "base_model_name_or_path": self.base.name_or_path, "revision": self.base.revision,
            "max_rank": self.max_rank, "findings": [f.to_dict() for f in self.findings],
            "warnings": [*self.base.warnings, *self.warnings],
        }  # fmt: skip


@dataclass(frozen=True)
class ExportReport:
    """One export: where it went, the name vLLM should serve it under, and the sha256 of every file written."""

    check: VllmCheck
    dest: Path
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.check.to_dict(), "dest": str(self.dest), "files": self.files}


# ------------------------------------------------------------------------------------------------ facts
def lora_name(version: AdapterVersion) -> str:
    """The name vLLM serves ``version`` under: ``NAME@sha256:<hex>`` of its registered weights, so that another
    version can never be served from the same name (an immutable content identity)."""
    digest = weights_digest(version.checksums)
    if not digest:
        raise ValueError(f"{version.ref} records no sha256 of its weight file; it cannot be named by digest")
    return f"{version.name}@{digest}"


def served_base(version: AdapterVersion) -> ServedBase:
    """How vLLM names the version's base: an offline base's hub id, a hub base's id (and revision), or the local
    folder it was trained on (with a warning: the path must exist where vLLM runs)."""
    base_id, revision = version.base_id, version.tags.get(Tag.BASE_REVISION, "")
    if base_id in OFFLINE_HUB_IDS:
        hub_id = OFFLINE_HUB_IDS[base_id]
        warnings: tuple[str, ...] = ()
        if base_id in CONVERTED_FROM_GGUF:
            warnings = (
                f"trained on the offline base {base_id}, {CONVERTED_FROM_GGUF[base_id]}: the weights of {hub_id} "
                "are close to it but not the same. To serve exactly what was evaluated, start vLLM on the "
                'converted folder (python -c "from adapter_registry.bases.resolve import offline_base_path; '
                f"print(offline_base_path('{base_id}'))\")",
            )
        return ServedBase(hub_id, "", warnings)
    if revision:
        return ServedBase(base_id, revision)
    if not base_id:
        return ServedBase(
            "", "", (f"{version.ref} records no base (tag {Tag.BASE_ID}); name the base to vLLM",)
        )
    return ServedBase(
        base_id, "",
        (f"the base is the local folder {base_id!r}: vLLM must be started on that folder (or a copy of the same "
         "weights) where it runs",),
    )  # fmt: skip


def weight_keys(folder: Path) -> tuple[str, ...]:
    """Names of the tensors in the folder's weight file (the safetensors header; a .bin is loaded)."""
    path = weights_file(folder)
    if path is None:
        return ()
    if path.suffix == ".safetensors":
        return tuple(weight_shapes(folder))
    from adapter_registry.adapter_folder import read_weights

    return tuple(read_weights(folder))


def check_version(
    version: AdapterVersion, folder: Path | None, max_lora_rank: int | None = DEFAULT_MAX_LORA_RANK
) -> VllmCheck:
    """vLLM's rules applied to ``version``, whose files (pulled and checked) are in ``folder``; with no folder
    the config recorded in its tags (``ar.peft_config``) is checked and the weights are not."""
    if folder is not None:
        config = read_config(folder)
        keys: tuple[str, ...] | None = weight_keys(folder)
    else:
        config = json.loads(version.tags.get(Tag.PEFT_CONFIG) or "{}")
        keys = None
    facts = AdapterFacts(
        config=config, task=version.task, architecture=version.tags.get(Tag.BASE_ARCHITECTURE, ""),
        weight_keys=keys, max_lora_rank=max_lora_rank,
    )  # fmt: skip
    findings = check(facts)
    warnings = list(_serving_warnings(version, folder))
    return VllmCheck(
        ref=version.ref, lora_name=lora_name(version), findings=tuple(findings), base=served_base(version),
        warnings=tuple(warnings), max_rank=facts.max_rank,
    )  # fmt: skip


def _serving_warnings(version: AdapterVersion, folder: Path | None) -> list[str]:
    out = []
    if folder is not None and not (folder / CONTRACT_FILE).is_file():
        out.append(
            f"{version.ref} has no {CONTRACT_FILE} (registered before serving contracts): clients must render "
            "the prompt themselves"
            + (
                f"; its closed answer set is in {LEGACY_ANSWERS_FILE}"
                if (folder / LEGACY_ANSWERS_FILE).is_file()
                else ""
            )
        )
    quantization = _contract_quantization(folder)
    if version.method == "qlora" or quantization:
        out.append(
            f"evaluated on a quantised base ({quantization or 'QLoRA'}, bitsandbytes): the nearest vLLM has is "
            "--quantization bitsandbytes (in-flight 4-bit); on a full-precision base its answers may differ from "
            "evaluation's"
        )
    return out


def _contract_quantization(folder: Path | None) -> str:
    if folder is None:
        return ""
    try:
        contract = ServingContract.read(folder)
    except ContractError:
        return ""
    return contract.base_quantization if contract else ""


# ------------------------------------------------------------------------------------------------ export
def export_folder(
    version: AdapterVersion,
    folder: Path,
    dest: Path,
    max_lora_rank: int | None = DEFAULT_MAX_LORA_RANK,
    served_at: Path | None = None,
) -> ExportReport:
    """Write the vLLM folder of ``version`` (its checked files in ``folder``) into ``dest`` (new or empty); its
    README names ``served_at`` (default ``dest``) as the path vLLM loads it from.

    Raises ExportRefused, writing nothing, when vLLM cannot take the adapter.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"destination {str(dest)!r} exists and is not an empty folder")
    verdict = check_version(version, folder, max_lora_rank)
    if not verdict.ok:
        raise ExportRefused(version.ref, list(verdict.findings))
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.export-", dir=dest.parent))
    try:
        _write(version, folder, staging, verdict, served_at or dest)
        files = sha256_folder(staging)
        manifest = {
            "version": version.ref, "lora_name": verdict.lora_name,
            "weights_digest": weights_digest(version.checksums), "registered_files": version.checksums,
            "exported_files": files, "base_model_name_or_path": verdict.base.name_or_path,
            "revision": verdict.base.revision,
        }  # fmt: skip
        (staging / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        dest.mkdir(exist_ok=True)
        for item in staging.iterdir():
            shutil.move(str(item), dest / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportReport(verdict, dest, files)


def export_version(
    store: AdapterStore, ref: str, dest: Path, max_lora_rank: int | None = DEFAULT_MAX_LORA_RANK
) -> ExportReport:
    """Pull ``ref`` (sha256-checked) and export it for vLLM into ``dest``."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"destination {str(dest)!r} exists and is not an empty folder")
    with tempfile.TemporaryDirectory(prefix="adapter-export-") as tmp:
        version = store.pull(ref, Path(tmp) / "adapter")
        return export_folder(version, Path(tmp) / "adapter", dest, max_lora_rank)


def _write(version: AdapterVersion, source: Path, out: Path, verdict: VllmCheck, final: Path) -> None:
    config = read_config(source)
    config["base_model_name_or_path"] = verdict.base.name_or_path
    config["revision"] = verdict.base.revision or None
    config["modules_to_save"] = None
    config["inference_mode"] = True
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    weights = weights_file(source)
    assert weights is not None  # check_version read it
    if weights.name == WEIGHT_FILES[0]:
        shutil.copyfile(weights, out / WEIGHT_FILES[0])
    else:
        _bin_to_safetensors(source, out / WEIGHT_FILES[0])
    for name in (CONTRACT_FILE, LEGACY_ANSWERS_FILE):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    if (source / "README.md").is_file():
        shutil.copyfile(source / "README.md", out / MODEL_CARD)
    (out / "README.md").write_text(readme(version, verdict, out, final))


def _bin_to_safetensors(source: Path, target: Path) -> None:
    from safetensors.torch import save_file

    from adapter_registry.adapter_folder import read_weights

    tensors = {k: v.detach().contiguous().clone() for k, v in read_weights(source).items()}
    save_file(tensors, str(target), metadata={"format": "pt"})


def readme(version: AdapterVersion, verdict: VllmCheck, folder: Path, served_at: Path | None = None) -> str:
    """How to serve the exported folder (its files in ``folder``, to be served from ``served_at``) with vLLM, and
    how to ask it as evaluation did."""
    where = (served_at or folder).resolve()
    name = verdict.lora_name
    base = verdict.base
    rank = needed_max_lora_rank(max(verdict.max_rank, 1))
    quantized = any("bitsandbytes" in w for w in verdict.warnings)
    serve = (
        f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve {base.name_or_path or '<base>'}"
        + (f" --revision {base.revision}" if base.revision else "")
        + (" --quantization bitsandbytes" if quantized else "")
        + f" \\\n    --enable-lora --max-lora-rank {rank} --lora-modules '{name}={where}'"
    )
    lines = [
        f"# {version.name} version {version.version}, exported for vLLM",
        "",
        f"Exported by `adapter-registry export {version.ref} DIR --format vllm` from the registered files "
        f"(sha256-checked); weights `{weights_digest(version.checksums)}`. Serve it under the name `{name}`: the",
        "digest in the name means another version can never answer under it.",
        "",
        "## Serve",
        "",
        "```bash",
        serve,
        "```",
        "",
        "Or load it into a running server (started with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`):",
        "",
        "```bash",
        "curl -X POST http://localhost:8000/v1/load_lora_adapter -H 'Content-Type: application/json' \\",
        f"    -d '{json.dumps({'lora_name': name, 'lora_path': str(where)})}'",
        "```",
        "",
    ]
    lines += [f"Note: {w}" for w in (*base.warnings, *verdict.warnings)] + [""]
    lines += ["## Ask it as it was evaluated", ""]
    try:
        contract = ServingContract.read(folder)
    except ContractError as exc:
        contract, problem = None, str(exc)
    else:
        problem = f"no {CONTRACT_FILE}: render the prompt as training did (see {MODEL_CARD})"
    if contract is None:
        lines += [problem, ""]
        return "\n".join(lines)
    example = {"chat": {"messages": [{"role": "user", "content": "<your text>"}]}}.get(contract.format)
    path, body = request_body(contract, name, example or "<your text>")
    lines += [
        f"Format `{contract.format}`, " + (
            "the base's chat template (vLLM's chat endpoint applies it)" if contract.chat_template
            else f"prompt template `{json.dumps(contract.prompt_template)}`"
        ) + f"; decoding {contract.decoding}, temperature 0, at most {contract.max_new_tokens} new tokens"
        + (f"; the answer starts with one of {len(contract.answers)} ({', '.join(contract.answers[:6])}"
           + (", ..." if len(contract.answers) > 6 else "") + ")"
           + (f", then ends or goes on freely after `{contract.answer_separator.rstrip()}`"
              if contract.answer_separator.strip() else "")
           + ", as vLLM's structured output" if contract.answers else "") + ".",
        "",
        "```bash",
        f"curl http://localhost:8000{path} -H 'Content-Type: application/json' \\",
        f"    -d '{json.dumps(body, ensure_ascii=False)}'",
        "```",
        "",
        "vLLM before v0.12 takes `guided_regex` / `guided_choice` instead of `structured_outputs`.",
        "",
    ]  # fmt: skip
    return "\n".join(lines)
