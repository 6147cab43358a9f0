"""Routing among registered adapters: the words both kinds of routed adapter share, and the router's decision.

A *router* (a recipe with ``routes_to:``) is a small classifier whose labels are registered adapter names (its
*experts*); ``serve`` asks it which expert answers a request, and the chosen expert answers under its own serving
contract. An *Arrow mixture* (``compose: combination_type: arrow``) routes each token among its experts inside
the model (peft's Arrow). Both are registered with their experts pinned in their lineage (``ar.route.*`` tags).

What a router reads of a request is :func:`route_text`: the same text its training rows were derived from (each
expert's own training prompts, labelled with the expert's name), so that what is served is what was evaluated.
:func:`decide` turns its probabilities into a decision: the top-1 expert, or the fallback adapter when the top
probability is below the threshold. Evaluation and ``serve`` both call it.

Ground floor: imports nothing of ours but the registry's tag keys (``registry.entities``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapter_registry.registry.entities import Tag

ROUTER, ARROW = "router", "arrow"  # the two kinds (tag ar.route.kind)


class RoutingError(ValueError):
    """A router or mixture that cannot be built or served as asked; the message names what and the fix."""


def route_text(value: str | Mapping[str, Any]) -> str:
    """The text a router classifies for a request's ``input`` (or a training record of an expert's data).

    A string is itself; a record of the completion format its ``prompt``; alpaca its ``instruction`` (and ``input``
    after a blank line when given); chat the last user message. A ``text``-format record has no request to route.
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping):
        raise RoutingError(f"a routed input is a string or a record of fields, not {type(value).__name__}")
    if "prompt" in value:
        return str(value["prompt"])
    if "instruction" in value:
        extra = value.get("input") or ""
        return str(value["instruction"]) + (f"\n\n{extra}" if str(extra).strip() else "")
    if "messages" in value:
        users = [
            m.get("content", "")
            for m in value["messages"] or ()
            if isinstance(m, Mapping) and m.get("role") == "user"
        ]
        if users:
            return str(users[-1])
        raise RoutingError("a routed chat input needs at least one user message")
    raise RoutingError(
        f"a routed input needs the user's text: a string, or a record with 'prompt', 'instruction' or 'messages' "
        f"(got fields {sorted(value)})"
    )


@dataclass(frozen=True)
class Decision:
    """Which adapter answers one request, and why."""

    adapter: str  # the adapter that answers: the top-1 expert, or the fallback
    top: str  # the router's top-1 label
    confidence: float  # its probability
    abstained: bool  # the confidence was below the threshold: the fallback answers


def decide(
    probabilities: Sequence[float], labels: Sequence[str], threshold: float = 0.0, fallback: str | None = None
) -> Decision:
    """The top-1 label of ``probabilities`` (in ``labels`` order), or ``fallback`` when its probability is below
    ``threshold`` (a router without a fallback never abstains: its threshold is 0)."""
    if len(probabilities) != len(labels) or not labels:
        raise RoutingError(f"{len(probabilities)} probabilities for {len(labels)} labels")
    best = max(range(len(labels)), key=lambda i: probabilities[i])
    confidence = float(probabilities[best])
    abstained = fallback is not None and confidence < threshold
    return Decision(fallback if abstained and fallback else labels[best], labels[best], confidence, abstained)


@dataclass(frozen=True)
class PinnedExpert:
    """One expert as a routed adapter recorded it: its registered name and the version it was built with."""

    name: str
    version: int
    asked: str = ""  # as the recipe wrote it (NAME@STAGE or NAME/VERSION)
    digest: str = ""  # sha256 of its weights as registered

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "asked": self.asked, "digest": self.digest}


@dataclass(frozen=True)
class RouteFacts:
    """What a routed adapter version records of its routing (``ar.route.*`` tags), read back."""

    kind: str  # router | arrow
    experts: tuple[PinnedExpert, ...]
    threshold: float = 0.0
    fallback: PinnedExpert | None = None

    @property
    def pinned(self) -> tuple[PinnedExpert, ...]:
        """Every adapter the router sends requests to: its experts and its fallback."""
        extra = (self.fallback,) if self.fallback is not None and self.fallback.name not in self.names else ()
        return (*self.experts, *extra)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.experts)


def route_parents(facts: RouteFacts) -> list[dict[str, Any]]:
    """The routed adapter's parents as lineage records them (``ar.parents``): each expert's version, name and
    weights digest, and a router's fallback (``role: fallback``) when it is not one of them."""
    parents = [
        {"version": e.ref, "expert": e.name, "digest": e.digest, "role": "expert"} for e in facts.experts
    ]
    if facts.fallback is not None and facts.fallback.name not in facts.names:
        f = facts.fallback
        parents.append({"version": f.ref, "expert": f.name, "digest": f.digest, "role": "fallback"})
    return parents


def route_tags(facts: RouteFacts) -> dict[str, str]:
    """The ``ar.route.*`` tags of ``facts`` (read back by :func:`route_facts`)."""
    tags = {
        Tag.ROUTE_KIND: facts.kind,
        Tag.ROUTE_EXPERTS: json.dumps([e.to_dict() for e in facts.experts], sort_keys=True),
    }
    if facts.kind == ROUTER:
        tags[Tag.ROUTE_THRESHOLD] = f"{facts.threshold:g}"
        tags[Tag.ROUTE_FALLBACK] = (
            json.dumps(facts.fallback.to_dict(), sort_keys=True) if facts.fallback else ""
        )
    return tags


def arrow_tags(parents: Sequence[Mapping[str, Any]], top_k: int, temperature: float) -> dict[str, str]:
    """An Arrow mixture's ``ar.route.*`` tags from its composed parents (``{"version": "NAME/N", "digest"}`` each,
    in routing order) and its routing settings."""
    experts = tuple(
        PinnedExpert(str(p["version"]).split("/")[0], int(str(p["version"]).split("/")[1]), str(p["version"]),
                     str(p.get("digest", "")))
        for p in parents
    )  # fmt: skip
    return {
        **route_tags(RouteFacts(ARROW, experts)),
        Tag.ROUTE_TOP_K: str(top_k),
        Tag.ROUTE_TEMPERATURE: f"{temperature:g}",
    }


def route_facts(tags: Mapping[str, str]) -> RouteFacts | None:
    """The routing facts a version's tags record; None for an adapter that routes nothing."""
    kind = tags.get(Tag.ROUTE_KIND, "")
    if not kind:
        return None

    def pinned(data: Any) -> PinnedExpert:
        return PinnedExpert(
            str(data["name"]), int(data["version"]), str(data.get("asked", "")), str(data.get("digest", ""))
        )

    try:
        experts = tuple(pinned(e) for e in json.loads(tags.get(Tag.ROUTE_EXPERTS) or "[]"))
        fallback_text = tags.get(Tag.ROUTE_FALLBACK, "")
        fallback = pinned(json.loads(fallback_text)) if fallback_text else None
        threshold = float(tags.get(Tag.ROUTE_THRESHOLD) or 0.0)
    except (ValueError, KeyError, TypeError) as exc:
        raise RoutingError(f"the {Tag.ROUTE_KIND}={kind} version's routing tags do not parse: {exc}") from exc
    return RouteFacts(kind, experts, threshold, fallback)
