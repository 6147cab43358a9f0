"""The ``compose:`` block of a recipe: a new LoRA adapter built from registered ones, not trained.

peft's ``add_weighted_adapter`` combines LoRA adapters of one base: ``linear`` (weighted sum of the A and B
factors; parents of one rank), ``cat`` (concatenated factors; ranks may differ, the result's rank is their
sum), ``svd`` (weighted sum of the full updates, truncated by SVD to ``svd_rank``), and the model-merging
methods ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune`` (which prune each update to ``density``
first) with their ``*_svd`` variants. A composed recipe has ``compose:`` instead of ``method:`` + ``training:``;
the rest (base, task, data, evaluation, merge, registration) means what it means for a trained adapter.

Ground floor: imports nothing of ours above ``recipes``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from adapter_registry.closed import Closed

COMBINATIONS = (
    "linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
    "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd",
)  # fmt: skip
NEEDS_DENSITY = frozenset(c for c in COMBINATIONS if c.startswith(("ties", "dare", "magnitude")))
SIGNED = frozenset({"ties", "ties_svd", "dare_ties", "dare_ties_svd"})  # take majority_sign_method
SVD = frozenset(c for c in COMBINATIONS if c.endswith("svd"))  # take svd_rank / svd_clamp
# parents of one rank (peft combines their A and B factors directly)
SAME_RANK = frozenset({"linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"})
REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[1-9][0-9]*|@(candidate|staging|production))$"

Combination = Literal[
    "linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
    "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd",
]  # fmt: skip


class ParentSpec(Closed):
    """One registered adapter that goes into the composition, and its weight."""

    version: str = Field(
        pattern=REF_PATTERN,
        description="a registered adapter: NAME/VERSION, or NAME@STAGE (resolved when the recipe runs; the "
        "registered lineage records the version number it resolved to)",
    )
    weight: float = Field(
        description="its weight in the combination; negative subtracts the parent's effect (task arithmetic)"
    )


class ComposeSpec(Closed):
    """Build the adapter from registered LoRA adapters of the same base with peft's add_weighted_adapter."""

    parents: list[ParentSpec] = Field(
        min_length=1,
        description="the registered adapters to combine, each with its weight (at least two, except linear)",
    )
    combination_type: Combination = Field(
        description="linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune, or an *_svd variant "
        "of the last four (see docs/methods.md, Composition)"
    )
    density: float | None = Field(
        None,
        gt=0,
        le=1,
        description="ties, dare_* and magnitude_prune*: share of each update's values kept (1: none pruned)",
    )
    majority_sign_method: Literal["total", "frequency"] | None = Field(
        None, description="ties and dare_ties (and their *_svd): how the sign of each value is elected"
    )
    svd_rank: int | None = Field(
        None, ge=1, description="svd and *_svd: rank of the result (default: the largest parent rank)"
    )
    svd_clamp: float | None = Field(
        None, gt=0, le=1, description="svd and *_svd: quantile at which singular vectors are clamped"
    )
    max_length: int = Field(128, ge=8, le=32768, description="tokens per test example when scoring")
    seed: int = Field(0, description="seeds DARE's random pruning and the carve of a validation split")

    @model_validator(mode="after")
    def _consistent(self) -> ComposeSpec:
        kind = self.combination_type
        if not any(p.weight for p in self.parents):
            raise ValueError("every parent has weight 0: the composed adapter would change nothing")
        refs = [p.version for p in self.parents]
        twice = sorted({r for r in refs if refs.count(r) > 1})
        if twice:
            raise ValueError(f"parents {twice} are listed twice; give each parent once with its total weight")
        if len(self.parents) < 2 and kind != "linear":
            raise ValueError(
                f"combination_type {kind} combines at least two parents (got one); "
                "to rescale a single adapter use combination_type: linear"
            )
        if kind in NEEDS_DENSITY and self.density is None:
            raise ValueError(
                f"combination_type {kind} prunes each parent's update first: give 'density' in (0, 1], "
                "the share of values kept (e.g. density: 0.5)"
            )
        if kind not in NEEDS_DENSITY and self.density is not None:
            raise ValueError(
                f"'density' does not apply to combination_type {kind}; "
                f"it applies to {', '.join(sorted(NEEDS_DENSITY))}"
            )
        if kind not in SIGNED and self.majority_sign_method is not None:
            raise ValueError(
                f"'majority_sign_method' does not apply to combination_type {kind}; "
                f"it applies to {', '.join(sorted(SIGNED))}"
            )
        for key in ("svd_rank", "svd_clamp"):
            if kind not in SVD and getattr(self, key) is not None:
                raise ValueError(
                    f"'{key}' does not apply to combination_type {kind}; it applies to {', '.join(sorted(SVD))}"
                )
        return self

    @property
    def weights(self) -> list[float]:
        return [p.weight for p in self.parents]
