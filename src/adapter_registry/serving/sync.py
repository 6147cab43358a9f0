"""Keeping the served adapters equal to the registry: where adapters come from, and one sync per poll.

An :class:`AdapterSource` says which version of each adapter to serve for the stage (and which stage holders it
holds back) and fetches its files; :class:`RegistrySource` is the MLflow registry through ``AdapterStore``: alias
holders checked against the audit trail (only attested versions serve), files pulled with their registered sha256
checked. :class:`RegistrySync` pulls new and moved versions into the local :class:`AdapterCache` (a folder per
registered content, so a cold load never calls the registry) and offers them to the ``Residency`` (which loads
them now or on their first request, within its resident limit), withdraws adapters that left the stage, and keeps
the previous version serving when a new one is refused or fails to load. Request routers (``ar.route.kind:
router``) are handed to ``serving.routers.Routers`` instead of the pool.

A running canary (``registry.canary``, production only) is handed out beside its adapter's production holder when
the audit trail attests it; the sync serves its candidate under the internal name ``NAME:canary``
(``serving.canary``) and publishes the routes of the canaries it serves (``canaries``) for the requests to follow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from adapter_registry.adapter_folder import weights_digest
from adapter_registry.checksums import checksum_problem, sha256_folder
from adapter_registry.registry.entities import AdapterVersion
from adapter_registry.serving.canary import CANARY_SUFFIX, CanaryRoute, canary_slot
from adapter_registry.serving.pool import AdapterPool, NotForThisServer, PoolError
from adapter_registry.serving.residency import Residency
from adapter_registry.serving.routers import Routers, is_router

if TYPE_CHECKING:
    from adapter_registry.registry.store import AdapterStore

__all__ = [
    "SERVED_TASK", "AdapterCache", "AdapterSource", "RegistrySource", "RegistrySync", "StageHolders", "content_key",
    "weights_digest",
]  # fmt: skip

log = logging.getLogger("adapter_registry.serving")
SERVED_TASK = "causal_lm_sft"
RECHECK_SECONDS = 0.5  # how soon a stage holder seen without its audit event is read again


# ------------------------------------------------------------------------------------------------ sources
@dataclass(frozen=True)
class StageHolders:
    """What a source hands out for one poll: the versions to serve, and the stage holders it holds back."""

    serve: list[AdapterVersion]  # one per adapter name: its attested stage holder
    held_back: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (alias holder, why not)
    errors: dict[str, str] = field(default_factory=dict)  # name -> why it could not be read this time
    # name -> its running canary's candidate and route (held back ones under "NAME:canary" in held_back)
    canaries: dict[str, tuple[AdapterVersion, CanaryRoute]] = field(default_factory=dict)


class AdapterSource(Protocol):
    """Where served adapters come from."""

    def holders(self) -> StageHolders:
        """The version of each adapter to serve for the stage, and the stage holders not to serve (with why)."""
        ...

    def fetch(self, version: AdapterVersion, dest: Path) -> Path:
        """The version's adapter files, checked, in the new folder ``dest``; returns the folder."""
        ...


class RegistrySource:
    """The MLflow registry: stage holders are aliases, checked against the audit trail; files are pulled with
    their registered sha256 checked.

    For ``staging`` and ``production`` an alias holder is served only when an audited promotion placed it
    (``registry.stages``); otherwise the version the audit trail last placed there is served instead, and the
    holder is reported as held back. ``candidate`` is not gated: its holder is served as it is. A canary's alias
    holder is handed out only when the trail's running canary is that version with the files it started with (the
    alias is looked up only for adapters whose trail has a canary running: no extra registry call otherwise).
    """

    def __init__(self, store: AdapterStore, stage: str = "production") -> None:
        self.store = store
        self.stage = stage

    def holders(self) -> StageHolders:
        from adapter_registry.registry.audit import AuditLog

        serve: list[AdapterVersion] = []
        held_back: dict[str, tuple[int, str]] = {}
        errors: dict[str, str] = {}
        canaries: dict[str, tuple[AdapterVersion, CanaryRoute]] = {}
        audit = AuditLog(self.store)
        for name in self.store.list_models():
            try:  # one adapter's broken record must not stop the others from syncing
                events = audit.read(name).events if self.stage in ("staging", "production") else ()
                version, held = self._holder(name, events)
                canary, canary_held = self._canary(name, events, version)
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            if version is not None:
                serve.append(version)
            if held is not None:
                held_back[name] = held
            if canary is not None:
                canaries[name] = canary
            if canary_held is not None:
                held_back[canary_slot(name)] = canary_held
        return StageHolders(serve, held_back, errors, canaries)

    def _canary(
        self, name: str, events: Any, production: AdapterVersion | None
    ) -> tuple[tuple[AdapterVersion, CanaryRoute] | None, tuple[int, str] | None]:
        """The running canary of ``name`` to serve beside production, or (its alias holder, why) held back."""
        from adapter_registry.checksums import files_digest
        from adapter_registry.registry.entities import CANARY_ALIAS
        from adapter_registry.registry.stages import check_canary, open_canary

        start = open_canary(events) if self.stage == "production" and production is not None else None
        if start is None:
            return None, None
        holder = self.store.holder(name, CANARY_ALIAS)
        digest = files_digest(holder.checksums) if holder is not None else ""
        check = check_canary(name, holder.version if holder else None, events, digest)
        if holder is None or not check.ok:
            return None, (holder.version if holder else start.version, f"{check.problem}; not served")
        assert production is not None
        details = start.details
        route = CanaryRoute(
            name, holder.version, production.version, int(details.get("percent", 0)),
            bool(details.get("shadow", False)), start.seq,
        )  # fmt: skip
        return (holder, route), None

    def _holder(self, name: str, events: Any) -> tuple[AdapterVersion | None, tuple[int, str] | None]:
        """The version of ``name`` to serve, and (the alias holder, why) when that holder is held back."""
        from adapter_registry.checksums import files_digest
        from adapter_registry.registry.entities import PROMOTION_STAGES
        from adapter_registry.registry.stages import check_stages

        holder = self.store.holder(name, self.stage)
        if self.stage not in PROMOTION_STAGES:
            return holder, None
        digests = {self.stage: files_digest(holder.checksums)} if holder is not None else {}
        check = check_stages(
            name, {self.stage: holder.version if holder else None}, events, (self.stage,), digests
        )
        checked = check[self.stage]
        if checked.ok:
            return holder, None
        assert checked.problem is not None
        if checked.attested is None:
            return None, (checked.holder or 0, f"{checked.problem}; nothing attested to serve")
        if checked.files_changed:  # nothing new is loaded; what is loaded (the bytes promoted) keeps serving
            from adapter_registry.registry.entities import RegistryError

            raise RegistryError("CORRUPTED", checked.problem)
        attested = self.store.get_version(name, checked.attested)
        return attested, (checked.holder or checked.attested,
                          f"{checked.problem}; serving the last attested version {checked.attested}")  # fmt: skip

    def fetch(self, version: AdapterVersion, dest: Path) -> Path:
        self.store.pull(version.ref, dest)
        return dest


# ------------------------------------------------------------------------------------------------ cache
class AdapterCache:
    """Pulled adapter files on local disk, one folder per registered content (``content_key`` of its files'
    sha256), so that a version is pulled once and a cold load reads local files. ``root`` None: a temporary
    folder removed by ``close``; a folder given is kept (and may be shared by replicas: a folder appears whole,
    by rename)."""

    def __init__(self, root: Path | None = None) -> None:
        self._tmp = None if root is not None else tempfile.TemporaryDirectory(prefix="adapter-cache-")
        self.root = Path(root) if root is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.root.mkdir(parents=True, exist_ok=True)

    def fetch(self, version: AdapterVersion, source: AdapterSource) -> Path:
        """The version's files in the cache, pulled (sha256-checked) unless already there and intact."""
        folder = self.root / content_key(version.checksums)
        if folder.is_dir():
            problem = checksum_problem(sha256_folder(folder), version.checksums)
            if problem is None:
                return folder
            log.warning("cached files of %s changed (%s): pulling them again", version.ref, problem)
            shutil.rmtree(folder, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=self.root))
        try:
            source.fetch(version, staging / "adapter")
            try:
                os.replace(staging / "adapter", folder)
            except OSError:
                if not folder.is_dir():  # else another replica put the same files there first
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def content_key(checksums: dict[str, str]) -> str:
    """The sha256 of a version's file checksums (path and sha256 per line, sorted): its cache folder's name."""
    lines = "".join(f"{path} {sha}\n" for path, sha in sorted(checksums.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ sync
@dataclass
class RegistrySync:
    """Keeps the pool equal to the source's stage holders that fit the base; one call of ``sync`` per poll."""

    pool: AdapterPool
    source: AdapterSource
    base_fingerprint: str
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (version, reason)
    failed: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (version, error) of a load
    last_sync: dt.datetime | None = None
    last_error: str | None = None
    # a held-back holder is refused only once seen again after settle_seconds: an alias moves a moment before its
    # promotion's audit event is written, and a webhook (or a poll) can land between the two
    settle_seconds: float = 2.0
    unsettled: dict[str, tuple[tuple[int, str], float]] = field(
        default_factory=dict
    )  # name -> (held, first seen)
    residency: Residency = None  # type: ignore[assignment]  # default: every servable adapter resident
    cache: AdapterCache = None  # type: ignore[assignment]  # default: a temporary folder
    foreign: set[str] = field(default_factory=set)  # refused names made for another server (base, task, bits)
    canaries: dict[str, CanaryRoute] = field(
        default_factory=dict
    )  # adapter -> its canary served now (replaced whole)
    routers: Routers = field(default_factory=Routers)  # the stage's request routers this replica serves
    _unservable: dict[tuple[str, int], tuple[str, bool]] = field(default_factory=dict)  # -> (why, foreign)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.residency is None:
            self.residency = Residency(self.pool)
        if self.cache is None:
            self.cache = AdapterCache()

    def refusal(self, version: AdapterVersion) -> str | None:
        """Why ``version`` cannot be served on this base, or None."""
        if version.base_fingerprint != self.base_fingerprint:
            return (
                f"trained on base {version.base_fingerprint or '(no ar.base.fingerprint tag)'}, "
                f"served base is {self.base_fingerprint}"
            )
        if version.task and version.task != SERVED_TASK:
            return f"task {version.task!r} is not served (the server generates text: {SERVED_TASK})"
        return None

    def sync(self) -> None:
        """Load new and moved stage holders; unload adapters that no longer hold the stage. Never raises.

        A stage holder that is refused or fails to load leaves the previous version serving (logged, and listed
        by ``stale``): a bad promotion must not take a tenant offline.
        """
        with self._lock:
            try:
                holders = self.source.holders()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("registry poll failed, serving what is loaded: %s", self.last_error)
                return
            names = {v.name for v in holders.serve}
            for (
                name,
                error,
            ) in holders.errors.items():  # keep serving what is loaded; say why it was not re-read
                if self.failed.get(name, (0, ""))[1] != error:
                    log.error("could not read %s from the registry, serving what is loaded: %s", name, error)
                loaded = self.residency.servable(name)
                self.failed[name] = (int(loaded.metadata.get("version", 0)) if loaded else 0, error)
            kept = names | set(holders.errors) | {canary_slot(n) for n in holders.errors}
            routers = [v for v in holders.serve if is_router(v)]  # served beside the pool (serving.routing)
            for version in holders.serve:
                if not is_router(version):
                    self._apply(version, held_back=version.name in holders.held_back)
            routes = {
                n: r for n, r in self.canaries.items() if n in holders.errors
            }  # unread: kept as they were
            for name, (version, route) in holders.canaries.items():
                production = self.residency.servable(name)
                if production is not None and production.metadata.get("version") == str(version.version):
                    continue  # the candidate holds production now (promoted): nothing to route
                kept.add(route.slot)
                self._apply(version, slot=route.slot, canary=route)
                served = self.residency.servable(route.slot)
                if (
                    production is not None
                    and served is not None
                    and served.metadata.get("version") == str(route.version)
                ):
                    routes[name] = route
            self.canaries = routes
            now = time.monotonic()
            for name, held in holders.held_back.items():
                if self.refused.get(name) == held:
                    continue
                first = self.unsettled.get(name)
                if first is None or first[0] != held:
                    self.unsettled[name] = (held, now)
                    log.info("%s/%s holds the stage but is not attested yet: re-checking", name, held[0])
                elif now - first[1] >= self.settle_seconds:
                    log.warning("refused %s/%s: %s", name, *held)
                    self.refused[name] = held
                    del self.unsettled[name]
            for gone in set(self.unsettled) - set(holders.held_back):
                del self.unsettled[gone]
            for servable in self.residency.servables():
                if servable.name not in kept:
                    self.residency.withdraw(servable.name)
                    why = (
                        "its canary ended"
                        if servable.name.endswith(CANARY_SUFFIX)
                        else "no attested version holds the stage"
                    )
                    log.info("unloaded %s: %s", servable.ref, why)
            for table in (self.refused, self.failed):
                for gone in set(table) - kept - set(holders.held_back):
                    del table[gone]
            self.routers.update(routers, self)
            self.last_sync = dt.datetime.now(dt.UTC)
            self.last_error = None

    def recheck_in(self) -> float | None:
        """Seconds until an unsettled stage holder should be looked at again (None: nothing to re-check): soon, as
        its audit event is usually written a moment after the alias moved, and at the latest when it settles."""
        if not self.unsettled:
            return None
        oldest = min(seen for _, seen in self.unsettled.values())
        return min(RECHECK_SECONDS, max(0.0, self.settle_seconds - (time.monotonic() - oldest)) + 0.05)

    def stale(self) -> dict[str, int]:
        """Adapter name -> the stage holder's version, for adapters still served by an older version."""
        pending = {**self.failed, **self.refused}
        return {s.name: pending[s.name][0] for s in self.residency.servables() if s.name in pending}

    def problems(self) -> dict[str, tuple[int | None, str]]:
        """Stage holders this server should serve and cannot: pulls or loads that failed, files the pool refuses,
        holders no audited promotion placed. Not those made for another server (another base, task or
        quantisation): they are listed as refused, and are not this server's problem."""
        found: dict[str, tuple[int | None, str]] = {
            n: v for n, v in self.refused.items() if n not in self.foreign
        }
        found.update(self.failed)
        for name, failure in self.residency.failures.items():
            found.setdefault(name, failure)
        found.update(self.routers.problems(self))
        return dict(sorted(found.items()))

    def close(self) -> None:
        """Remove the temporary cache (if the cache is one)."""
        self.cache.close()

    def _apply(
        self,
        version: AdapterVersion,
        held_back: bool = False,
        slot: str | None = None,
        canary: CanaryRoute | None = None,
    ) -> None:
        """Serve ``version`` under ``slot`` (default: its name) unless refused; ``held_back``: the stage holder is
        another version, refused by the source (its refusal stays listed while this one serves); ``canary``: the
        route of the canary it is the candidate of."""
        slot = slot or version.name
        current = self.residency.servable(slot)
        refusal = self.refusal(version)
        reason, foreign = (
            (refusal, True) if refusal else self._unservable.get((slot, version.version), ("", False))
        )
        if reason:
            self._refuse(slot, version, reason, foreign, current)
            return
        if not held_back:
            self.refused.pop(slot, None)
            self.foreign.discard(slot)
        if current is not None and current.metadata.get("version") == str(version.version):
            return
        started = time.perf_counter()
        try:
            folder = self.cache.fetch(version, self.source)
            resident = self.residency.offer(slot, folder, version.checksums, _metadata(version, canary))
        except PoolError as exc:  # the files are what was registered, and the pool cannot serve them
            foreign = isinstance(exc, NotForThisServer)
            self._unservable[(slot, version.version)] = (str(exc), foreign)
            self._refuse(slot, version, str(exc), foreign, current)
            return
        except Exception as exc:  # pull failed: keep serving the old version; retry at the next poll
            error = f"{type(exc).__name__}: {exc}"
            if self.failed.get(slot) != (version.version, error):
                log.error("could not load %s, still serving %s: %s", version.ref, _ref(current), error)
            self.failed[slot] = (version.version, error)
            return
        self.failed.pop(slot, None)
        log.info(
            "%s %s%s in %.2f s (replacing %s)", "loaded" if resident else "pulled (loaded on its first request)",
            version.ref, f" as the canary ({canary.percent}%)" if canary else "", time.perf_counter() - started,
            _ref(current),
        )  # fmt: skip

    def _refuse(self, slot: str, version: AdapterVersion, reason: str, foreign: bool, current: Any) -> None:
        if self.refused.get(slot) != (version.version, reason):
            log.warning("refused %s: %s (serving %s)", version.ref, reason, _ref(current))
        self.refused[slot] = (version.version, reason)
        if foreign:
            self.foreign.add(slot)
        else:
            self.foreign.discard(slot)


def _metadata(version: AdapterVersion, canary: CanaryRoute | None = None) -> dict[str, str]:
    return {
        **({"canary": str(canary.canary_id)} if canary is not None else {}),
        "adapter": version.name,
        "version": str(version.version),
        "ref": version.ref,
        "fingerprint": version.base_fingerprint,
        "digest": weights_digest(version.checksums),
        "loaded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _ref(served: Any) -> str:
    return "nothing" if served is None else str(served.metadata.get("ref", served.name))
