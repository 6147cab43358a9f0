"""Merge an adapter into its base (``merge_and_unload``) and prove the merged model behaves like the adapter.

Parity: max |logits(merged) − logits(adapter)| on held-out inputs must stay under a tolerance — 1e-4 in float32;
on a 4-bit base the merged weights are re-quantised, so rounding moves logits by far more (0.5 by default, and
peft warns). The merged model must also differ from the base: an adapter that changes nothing is an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adapter_registry.training.features import collate
from adapter_registry.training.heads import PooledClassifier

FLOAT32_TOLERANCE = 1e-4
QUANTIZED_TOLERANCE = 0.5


class MergeError(RuntimeError):
    """The merged model does not match the adapter, or the adapter changes nothing."""


@dataclass
class MergeReport:
    max_abs_diff: float  # merged vs adapter
    diff_vs_base: float  # merged vs base
    tolerance: float
    quantized: bool
    rows: int
    passed: bool
    warnings: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@torch.no_grad()
def _logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A causal LM's logits; a classifier's head logits, without its neighbour vote (a function of the same
    features, so their parity covers it; with it, a float-level tie among the k nearest rows could fail parity)."""
    model.eval()
    if isinstance(model, PooledClassifier):
        return model.head(model.features(batch["input_ids"], batch["attention_mask"])).float()
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def _is_quantized(model: nn.Module) -> bool:
    return any(p.__class__.__name__ in ("Params4bit", "Int8Params") for p in model.parameters())


def merge_adapter(
    model: Any,
    copy_of_model: Any,
    features: Sequence[dict],
    pad_id: int,
    tolerance: float | None = None,
) -> tuple[Any, MergeReport]:
    """Merge ``copy_of_model`` (the same adapter, loaded afresh from its saved folder: a deep copy of a
    bitsandbytes model loses its quantisation state) and check it against ``model``, which is left untouched.

    Raises :class:`MergeError` when parity fails or when the merged model equals the base.
    """
    if not features:
        raise MergeError("no held-out rows to check merge parity on")
    batch = collate(list(features), pad_id)
    quantized = _is_quantized(model)
    tol = tolerance or (QUANTIZED_TOLERANCE if quantized else FLOAT32_TOLERANCE)
    peft_model = model.encoder if isinstance(model, PooledClassifier) else model
    adapter_logits = _logits(model, batch)
    with peft_model.disable_adapter():
        base_logits = _logits(model, batch)
    merged = copy_of_model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if isinstance(merged, PooledClassifier):
            merged.encoder = merged.encoder.merge_and_unload()
        else:
            merged = merged.merge_and_unload()
    notes = sorted({str(w.message) for w in caught if "merge" in str(w.message).lower()})
    merged_logits = _logits(merged, batch)
    mask = batch["attention_mask"].bool()
    if merged_logits.dim() == 3:  # causal LM: compare real tokens only
        diff = (merged_logits - adapter_logits).abs()[mask]
        vs_base = (merged_logits - base_logits).abs()[mask]
    else:
        diff = (merged_logits - adapter_logits).abs()
        vs_base = (merged_logits - base_logits).abs()
    report = MergeReport(float(diff.max()), float(vs_base.max()), tol, quantized, len(features), True, notes)
    if report.max_abs_diff > tol:
        report.passed = False
        raise MergeError(
            f"merge parity failed: max |logits(merged) - logits(adapter)| = {report.max_abs_diff:.3g} > {tol:g}"
            + (
                " (merging re-quantises the base; on CPU, bitsandbytes' dequantisation does not match its 4-bit"
                " forward: serve the adapter unmerged)"
                if quantized
                else ""
            )
        )
    if report.diff_vs_base == 0.0:
        report.passed = False
        raise MergeError("the merged model equals the base: this adapter changes nothing")
    return merged, report
