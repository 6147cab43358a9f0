"""Does a registered adapter fit a base model? Structure first, then a forward pass.

Outcomes (and the CLI's exit codes): ``compatible`` (0) when every check passes and the base weights are the
ones the adapter was trained on; ``retrain_recommended`` (3) when everything fits but the base weights differ
(the adapter loads and runs, but was tuned for other weights); ``incompatible`` (4) with the exact mismatch
named. The functional check loads base + adapter, runs a forward pass and requires the adapter to change the
outputs: an adapter whose target modules match nothing loads silently and serves base-model output.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adapter_registry.adapter_folder import AdapterFolderError, lora_modules, weight_shapes
from adapter_registry.registry.entities import AdapterVersion, RegistryError, Tag

COMPATIBLE, RETRAIN, INCOMPATIBLE = "compatible", "retrain_recommended", "incompatible"
EXIT_CODES = {COMPATIBLE: 0, RETRAIN: 3, INCOMPATIBLE: 4}


@dataclass(frozen=True)
class Check:
    """One compatibility check."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class CompatReport:
    """The checks of one adapter version against one base, and the outcome."""

    version: str
    base: str
    outcome: str
    checks: tuple[Check, ...]

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    @property
    def reason(self) -> str:
        failed = [c for c in self.checks if not c.passed]
        return "; ".join(f"{c.name}: {c.detail}" for c in failed) or "every check passed"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "checks": [asdict(c) for c in self.checks], "exit_code": self.exit_code}


def _base_class(task: str) -> Any:
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()  # the CLI's stderr keeps to one line
    logging.set_verbosity_error()

    return AutoModel if task == "sequence_classification" else AutoModelForCausalLM


def _adapter_shapes(adapter_dir: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """Targeted module path -> {lora part -> shape}, from the saved adapter weights."""
    try:
        shapes = weight_shapes(adapter_dir)
    except AdapterFolderError as exc:
        raise RegistryError("CORRUPTED", str(exc)) from exc
    return {
        module: {part: shapes[key] for part, key in parts.items()}
        for module, parts in lora_modules(shapes).items()
    }


def _structure_checks(version: AdapterVersion, base: Any, model: Any, adapter_dir: Path) -> list[Check]:
    checks = []
    recorded_arch = version.tags.get(Tag.BASE_ARCHITECTURE, "")
    arch_ok = not recorded_arch or recorded_arch == base.architecture
    checks.append(
        Check(
            "architecture",
            arch_ok,
            f"base is {base.architecture}, adapter was trained on {recorded_arch or '?'}",
        )
    )
    recorded = json.loads(version.tags.get(Tag.BASE_SHAPES) or "{}")
    actual = {**base.shapes, "num_layers": base.shapes.get("num_hidden_layers")}
    for key in ("model_type", "vocab_size", "hidden_size", "num_layers", "num_hidden_layers"):
        if key in recorded and actual.get(key) is not None:
            ok = recorded[key] == actual[key]
            checks.append(Check(key, ok, f"base has {actual[key]}, adapter expects {recorded[key]}"))
    embeddings = model.get_input_embeddings().weight.shape
    checks.append(Check("embedding size", True, f"{tuple(embeddings)}"))
    named = dict(model.named_modules())
    for module, parts in sorted(_adapter_shapes(adapter_dir).items()):
        target = named.get(module) or named.get(module.removeprefix("model."))
        if target is None:
            checks.append(Check(f"module {module}", False, "not found in the base model"))
            continue
        if "lora_A" in parts:
            expected_in, expected_out = parts["lora_A"][1], parts["lora_B"][0]
            got = (getattr(target, "in_features", None), getattr(target, "out_features", None))
        else:
            expected_in, expected_out = parts["lora_embedding_A"][1], parts["lora_embedding_B"][0]
            got = (getattr(target, "num_embeddings", None), getattr(target, "embedding_dim", None))
        ok = got == (expected_in, expected_out)
        checks.append(
            Check(
                f"module {module}",
                ok,
                f"base {got[0]}→{got[1]}, adapter expects {expected_in}→{expected_out}",
            )
        )
    return checks


def _functional_check(version: AdapterVersion, model: Any, adapter_dir: Path) -> Check:
    import torch
    from peft import PeftModel

    vocab = int(model.get_input_embeddings().weight.shape[0])
    ids = torch.arange(1, 9).remainder(vocab).unsqueeze(0)
    with torch.no_grad():
        before = _output(model(input_ids=ids))
        try:
            peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
        except Exception as exc:
            return Check("functional", False, f"peft could not load the adapter: {type(exc).__name__}: {exc}")
        after = _output(peft_model(input_ids=ids))
    if before.shape != after.shape or not torch.isfinite(after).all():
        return Check(
            "functional", False, f"forward pass gave shape {tuple(after.shape)} or non-finite values"
        )
    diff = float((after - before).abs().max())
    changed = diff > 1e-6
    return Check("functional", changed, f"max |output(adapter) - output(base)| = {diff:.3g}"
                 + ("" if changed else ": the adapter does not change the outputs"))  # fmt: skip


def _output(result: Any) -> Any:
    return result.logits if getattr(result, "logits", None) is not None else result.last_hidden_state


def check_compat(version: AdapterVersion, adapter_dir: Path, base_ref: str) -> CompatReport:
    """Run every check of ``version`` (its files in ``adapter_dir``) against base ``base_ref``."""
    from adapter_registry.bases.resolve import BaseModelError, resolve_reference

    try:
        base = resolve_reference(base_ref)
    except BaseModelError as exc:
        raise RegistryError("INVALID_INPUT", f"base {base_ref!r} is not a model: {exc}") from exc
    try:
        model = _base_class(version.task).from_pretrained(str(base.path))
    except Exception as exc:
        raise RegistryError(
            "INVALID_INPUT", f"base {base_ref!r} does not load: {type(exc).__name__}: {exc}"
        ) from exc
    model.eval()
    checks = _structure_checks(version, base, model, adapter_dir)
    structure_ok = all(c.passed for c in checks)
    same_weights = bool(version.base_fingerprint) and version.base_fingerprint == base.fingerprint
    checks.append(Check("base fingerprint", same_weights,
                        f"base is {base.fingerprint}, adapter was trained on {version.base_fingerprint or '?'}"))  # fmt: skip
    if structure_ok:
        checks.append(_functional_check(version, model, adapter_dir))
    if not all(c.passed for c in checks if c.name != "base fingerprint"):
        outcome = INCOMPATIBLE
    else:
        outcome = COMPATIBLE if same_weights else RETRAIN
    return CompatReport(version=version.ref, base=base_ref, outcome=outcome, checks=tuple(checks))
