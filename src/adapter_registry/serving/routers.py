"""The request routers one replica serves, kept equal to the registry per poll (``RegistrySync`` calls ``update``).

A *router* is a registered classifier whose labels are adapter names (a recipe with ``routes_to:``; its
``ar.route.*`` tags pin its experts, ``routing.route_facts``). :class:`Routers` keeps the stage's attested router
holders whose experts this replica serves: each is pulled (sha256-checked, through the sync's cache) and loaded on
its own base (a small encoder, beside the pool's generation base) by ``pyfunc.AdapterModel``. A router whose
expert serves another version than the one it pinned is a problem (``problems``: it was evaluated with the pinned
one) and still routes. ``serving.routing`` answers the routed requests.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from adapter_registry.adapter_folder import weights_digest
from adapter_registry.registry.entities import AdapterVersion, Tag
from adapter_registry.routing import ROUTER, Decision, RouteFacts, decide, route_facts

if TYPE_CHECKING:
    from adapter_registry.pyfunc import AdapterModel

__all__ = ["RouterSlot", "Routers", "is_router"]

log = logging.getLogger("adapter_registry.serving")


class _Sync(Protocol):
    """What ``Routers`` reads of ``serving.sync.RegistrySync`` (its residency, cache and source)."""

    residency: Any
    cache: Any
    source: Any


def is_router(version: AdapterVersion) -> bool:
    """A registered request router (``ar.route.kind: router``)."""
    return version.tags.get(Tag.ROUTE_KIND) == ROUTER


@dataclass
class RouterSlot:
    """One served router: its version, routing facts and classifier (called by one request at a time)."""

    version: AdapterVersion
    facts: RouteFacts
    model: AdapterModel
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def digest(self) -> str:
        return weights_digest(self.version.checksums)

    def decide(self, text: str) -> Decision:
        """The expert (or fallback) for ``text``, by the router's probabilities and threshold."""
        with self._lock:
            (probabilities,) = self.model.probabilities([text])
        fallback = self.facts.fallback.name if self.facts.fallback is not None else None
        return decide(probabilities, list(self.model.labels), self.facts.threshold, fallback)


@dataclass
class Routers:
    """The routers this replica serves, replaced per poll by ``update`` (``RegistrySync`` calls it)."""

    slots: dict[str, RouterSlot] = field(default_factory=dict)
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)  # router -> (version, why not served)

    def update(self, versions: list[AdapterVersion], sync: _Sync) -> None:
        """Serve each router of ``versions`` whose experts this replica serves (loaded once per version); drop the
        others (listed in ``refused`` with why). Never raises: a router that fails keeps its previous version."""
        from adapter_registry.pyfunc import AdapterModel

        slots: dict[str, RouterSlot] = {}
        refused: dict[str, tuple[int, str]] = {}
        for version in versions:
            try:
                facts = route_facts(version.tags)
                assert facts is not None
                missing = [e.name for e in facts.pinned if sync.residency.servable(e.name) is None]
                if missing:
                    refused[version.name] = (
                        version.version,
                        f"its experts {missing} are not served here (another base, or not in the stage)",
                    )
                    continue
                current = self.slots.get(version.name)
                if current is not None and current.version.version == version.version:
                    slots[version.name] = current
                    continue
                folder: Path = sync.cache.fetch(version, sync.source)
                slots[version.name] = RouterSlot(version, facts, AdapterModel(folder))
                log.info(
                    "loaded router %s (experts %s)", version.ref, ", ".join(e.ref for e in facts.experts)
                )
            except Exception as exc:
                previous = self.slots.get(version.name)
                if previous is not None:
                    slots[version.name] = previous
                refused[version.name] = (version.version, f"{type(exc).__name__}: {exc}")
                log.error("could not load router %s: %s", version.ref, exc)
        self.slots, self.refused = slots, refused

    def problems(self, sync: _Sync) -> dict[str, tuple[int | None, str]]:
        """Routers whose expert serves another version than the one the router was built and evaluated with."""
        found: dict[str, tuple[int | None, str]] = {}
        for name, slot in self.slots.items():
            moved = [
                f"{e.name} serves version {served.metadata.get('version')}, the router pinned {e.version}"
                for e in slot.facts.pinned
                if (served := sync.residency.servable(e.name)) is not None
                and served.metadata.get("version") != str(e.version)
            ]
            if moved:
                found[name] = (slot.version.version, "; ".join(moved) + " (promote a router built with them)")
        return found

    def describe(self, sync: _Sync) -> list[dict[str, Any]]:
        problems = self.problems(sync)
        return [
            {"name": name, "version": s.version.version, "digest": s.digest, "threshold": s.facts.threshold,
             "fallback": s.facts.fallback.ref if s.facts.fallback else None,
             "experts": [e.ref for e in s.facts.experts], "problem": problems.get(name, (None, None))[1]}
            for name, s in sorted(self.slots.items())
        ]  # fmt: skip
