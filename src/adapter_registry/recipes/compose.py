"""The ``compose:`` block of a recipe: a new LoRA adapter built from registered ones, not trained.

peft's ``add_weighted_adapter`` combines LoRA adapters of one base: ``linear`` (weighted sum of the A and B
factors; parents of one rank), ``cat`` (concatenated factors; ranks may differ, the result's rank is their
sum), ``svd`` (weighted sum of the full updates, truncated by SVD to ``svd_rank``), and the model-merging
methods ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune`` (which prune each update to ``density``
first) with their ``*_svd`` variants. A composed recipe has ``compose:`` instead of ``method:`` + ``training:``;
the rest (base, task, data, evaluation, merge, registration) means what it means for a trained adapter.

``arrow`` is not a weighted sum: peft's Arrow (``create_arrow_model``) keeps every parent as an *expert* and routes
each token to the ``top_k`` experts whose principal direction (the top right singular vector of each LoRA update)
is closest to the token, mixed by a softmax at ``router_temperature``; nothing is trained. Its parents take no
weight, must share one rank and one set of target modules, and the result cannot be merged.

Ground floor: imports nothing of ours above ``recipes``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from adapter_registry.closed import Closed

COMBINATIONS = (
    "linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
    "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd", "arrow",
)  # fmt: skip
ARROW = "arrow"  # peft's Arrow: the parents kept as experts, each token routed among them (no weights)
NEEDS_DENSITY = frozenset(c for c in COMBINATIONS if c.startswith(("ties", "dare", "magnitude")))
SIGNED = frozenset({"ties", "ties_svd", "dare_ties", "dare_ties_svd"})  # take majority_sign_method
SVD = frozenset(c for c in COMBINATIONS if c.endswith("svd"))  # take svd_rank / svd_clamp
# parents of one rank (peft combines their A and B factors directly; Arrow stacks them)
SAME_RANK = frozenset({"linear", "ties", "dare_linear", "dare_ties", "magnitude_prune", ARROW})
REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[1-9][0-9]*|@(candidate|staging|production))$"

Combination = Literal[
    "linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
    "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd", "arrow",
]  # fmt: skip


class ParentSpec(Closed):
    """One registered adapter that goes into the composition, and its weight."""

    version: str = Field(
        pattern=REF_PATTERN,
        description="a registered adapter: NAME/VERSION, or NAME@STAGE (resolved when the recipe runs; the "
        "registered lineage records the version number it resolved to)",
    )
    weight: float | None = Field(
        None,
        exclude_if=lambda v: v is None,  # a recipe's dump (and hash) holds only what it gives
        description="its weight in the combination; negative subtracts the parent's effect (task arithmetic); "
        "required for every combination_type but arrow, which takes none (it routes each token instead)",
    )


class ComposeSpec(Closed):
    """Build the adapter from registered LoRA adapters of the same base with peft's add_weighted_adapter."""

    parents: list[ParentSpec] = Field(
        min_length=1,
        description="the registered adapters to combine, each with its weight (at least two, except linear)",
    )
    combination_type: Combination = Field(
        description="linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune, or an *_svd variant "
        "of the last four (see docs/methods.md, Composition); arrow: a routed mixture of the parents (peft Arrow)"
    )
    top_k: int | None = Field(
        None,
        ge=1,
        exclude_if=lambda v: v is None,
        description="arrow: experts mixed for each token (default 2, at most the number of parents)",
    )
    router_temperature: float | None = Field(
        None,
        gt=0,
        exclude_if=lambda v: v is None,
        description="arrow: softmax temperature over the top_k experts' similarities (default 1)",
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
        if kind == ARROW:
            return self._arrow()
        for key in ("top_k", "router_temperature"):
            if getattr(self, key) is not None:
                raise ValueError(f"'{key}' applies to combination_type arrow only, not {kind}")
        unweighted = [p.version for p in self.parents if p.weight is None]
        if unweighted:
            raise ValueError(
                f"parents {unweighted} have no 'weight': combination_type {kind} sums weighted updates; give "
                "each parent a weight (e.g. weight: 0.5)"
            )
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

    def _arrow(self) -> ComposeSpec:
        weighted = [p.version for p in self.parents if p.weight is not None]
        if weighted:
            raise ValueError(
                f"parents {weighted} have a 'weight': arrow routes each token among its experts by similarity and "
                "takes no weights; remove them"
            )
        if len(self.parents) < 2:
            raise ValueError("combination_type arrow routes among at least two parents (got one)")
        names = [p.version.split("@", 1)[0].split("/", 1)[0] for p in self.parents]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"parents {twice} are listed twice: an arrow expert is one version of one adapter"
            )
        for key in ("density", "majority_sign_method", "svd_rank", "svd_clamp"):
            if getattr(self, key) is not None:
                raise ValueError(f"'{key}' does not apply to combination_type arrow")
        if self.top_k is not None and self.top_k > len(self.parents):
            raise ValueError(
                f"top_k {self.top_k} is more than the {len(self.parents)} parents: give at most {len(self.parents)}"
            )
        return self

    @property
    def arrow(self) -> bool:
        return self.combination_type == ARROW

    @property
    def arrow_top_k(self) -> int:
        """arrow: the experts mixed per token (default 2, at most the number of parents)."""
        return self.top_k if self.top_k is not None else min(2, len(self.parents))

    @property
    def arrow_temperature(self) -> float:
        return self.router_temperature if self.router_temperature is not None else 1.0

    @property
    def weights(self) -> list[float]:
        return [p.weight if p.weight is not None else 1.0 for p in self.parents]
