"""The ``routes_to:`` block of a recipe: a request router, a classifier whose labels are registered adapters.

A router recipe is a ``sequence_classification`` recipe (``method:`` + ``training:``, a small encoder such as
all-MiniLM-L6-v2, LP-FT like ``intent_router``) with a ``routes_to:`` block naming its *experts*: registered
generation adapters of one base. Its labels are their names. Its data is *derived* when the recipe gives no
``data:`` block: each expert's own registered training and test splits (the files its lineage names, checked
against their recorded md5), every row's request text labelled with that expert's name; a validation split is
carved from train. A ``data:`` block instead gives the rows (format classification), their labels exactly the
experts' names.

When the recipe runs, each expert (and the fallback) resolves to the version it names (``NAME@STAGE`` to the
stage's holder then) and is *pinned*: the version is recorded in the router's lineage, evaluation scores the
router with those versions, and ``serve`` routes only while those versions are what it serves.

Ground floor: imports nothing of ours but ``closed`` and ``recipes.compose`` (the reference pattern).
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from adapter_registry.closed import Closed
from adapter_registry.recipes.compose import REF_PATTERN


def ref_name(ref: str) -> str:
    """The registered name of a reference (``NAME/VERSION`` or ``NAME@STAGE``)."""
    return ref.split("@", 1)[0].split("/", 1)[0]


class RouteSpec(Closed):
    """Route each request to one of registered adapters: the classifier's labels are their names."""

    experts: list[str] = Field(
        min_length=2,
        description="the registered generation adapters to route among, NAME@STAGE or NAME/VERSION (each resolved "
        "and pinned when the recipe runs); their names are the router's labels",
    )
    threshold: float = Field(
        0.0,
        description="a probability in [0, 1]: below it the router abstains and 'fallback' answers (0: never abstains)",
    )
    fallback: str | None = Field(
        None,
        pattern=REF_PATTERN,
        description="the registered adapter that answers when the router abstains (NAME@STAGE or NAME/VERSION; "
        "pinned like the experts; one of them or another adapter of their base)",
    )

    @field_validator("experts")
    @classmethod
    def _refs(cls, experts: list[str]) -> list[str]:
        import re

        bad = [e for e in experts if not re.match(REF_PATTERN, str(e))]
        if bad:
            raise ValueError(
                f"{bad} are not registered adapters as NAME@STAGE (candidate, staging, production) or NAME/VERSION, "
                "e.g. acme_support_lora@production"
            )
        names = [ref_name(e) for e in experts]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{twice} listed twice: a router's labels are adapter names, one version each")
        return experts

    @field_validator("threshold")
    @classmethod
    def _probability(cls, threshold: float) -> float:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(
                f"threshold {threshold:g} is not a probability: give a value in [0, 1] (the top expert's "
                "probability below which the fallback answers; 0 never abstains)"
            )
        return threshold

    @model_validator(mode="after")
    def _fallback(self) -> RouteSpec:
        if self.threshold > 0 and self.fallback is None:
            raise ValueError(
                f"threshold {self.threshold:g} abstains below it, but no 'fallback' answers then: name one "
                "(e.g. fallback: one of the experts), or set threshold: 0"
            )
        return self

    @property
    def names(self) -> list[str]:
        """The router's labels: its experts' registered names, in the order given."""
        return [ref_name(e) for e in self.experts]
