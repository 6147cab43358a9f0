"""Which adapters are resident in the pool: every servable version is known, at most K are loaded.

The sync offers every stage holder it serves (its files already pulled, sha256-checked, into the local cache):
each is read and checked once (a refusal is known at once, not at its first request), then loaded if it is pinned,
if it replaces a resident version, or if a slot is free; otherwise only listed. A request for a listed adapter
loads it (a *cold start*): its cached files are checked against their registered sha256 again, read beside the
running batch, then installed in place of the least recently used resident adapter that is not pinned and has no
request in flight, in one hold of the model lock. Two requests for the same cold adapter share one load. When no
slot can be freed before the request's deadline, the request is refused (``CapacityError``) rather than queued
without bound.

``max_resident`` None means no limit (every servable adapter is loaded, as before capacity existed). Pinned names
are never evicted; more pins than ``max_resident`` is an error at start-up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from adapter_registry.checksums import checksum_problem, sha256_folder
from adapter_registry.serving.batcher import ShuttingDown
from adapter_registry.serving.pool import AdapterInfo, AdapterPool, PoolError, PreparedAdapter

if TYPE_CHECKING:
    from adapter_registry.serving.metrics import ServingMetrics

__all__ = ["CapacityError", "Residency", "Servable", "check_capacity"]

log = logging.getLogger("adapter_registry.serving")


class CapacityError(PoolError):
    """No resident slot could be freed in time: every resident adapter is pinned or busy."""


def check_capacity(max_resident: int | None, pinned: Iterable[str]) -> None:
    """Refuse a capacity that cannot hold the pinned adapters (a start-up error naming the fix)."""
    pins = sorted(set(pinned))
    if max_resident is not None and max_resident < 1:
        raise ValueError(f"--max-resident {max_resident} must be at least 1 (or left out: no limit)")
    if max_resident is not None and len(pins) > max_resident:
        raise ValueError(
            f"--max-resident {max_resident} is smaller than the {len(pins)} pinned adapters ({', '.join(pins)}): "
            f"raise --max-resident to at least {len(pins)} or pin fewer"
        )


@dataclass(frozen=True)
class Servable:
    """One adapter version this server serves: its checked files in the local cache, and what reading them
    showed (layers, ranks, bytes, contract)."""

    name: str
    folder: Path
    checksums: dict[str, str]  # registered sha256 per file: checked again at every load from the cache
    info: AdapterInfo  # as it will serve (slot "" until loaded)
    known_at: float = field(default_factory=time.time)

    @property
    def metadata(self) -> dict[str, str]:
        return self.info.metadata

    @property
    def ref(self) -> str:
        return self.metadata.get("ref", self.name)


class Residency:
    """The servable adapters and the resident ones (at most ``max_resident``), for one pool. Thread-safe; its
    lock is never held while waiting for the model, so ``try_acquire`` never blocks a caller for long."""

    def __init__(
        self,
        pool: AdapterPool,
        max_resident: int | None = None,
        pinned: Iterable[str] = (),
        metrics: ServingMetrics | None = None,
    ) -> None:
        check_capacity(max_resident, pinned)
        self.pool = pool
        self.max_resident = max_resident
        self.pinned = frozenset(pinned)
        self.metrics = metrics
        self.failures: dict[str, tuple[int | None, str]] = {}  # name -> (version, why) of a failed load
        self._servable: dict[str, Servable] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()  # resident names, least recently used first
        self._pending: Counter[str] = Counter()  # name -> requests holding it resident
        self._loading: set[str] = set()  # names being loaded (or swapped) now
        self._evicting: set[str] = set()  # names chosen to make room (or withdrawn), not unloaded yet
        self._reserved: set[str] = set()  # names being loaded into a slot they took
        self._closing = False
        self._cond = threading.Condition()

    # ------------------------------------------------------------------------------------ what is known
    def servable(self, name: str) -> Servable | None:
        return self._servable.get(name)

    def servables(self) -> list[Servable]:
        return sorted(self._servable.values(), key=lambda s: s.name)

    def resident(self) -> list[str]:
        with self._cond:
            return list(self._lru)

    def __len__(self) -> int:
        return len(self._servable)

    # ------------------------------------------------------------------------------------ the sync's side
    def offer(self, name: str, folder: Path, checksums: dict[str, str], metadata: dict[str, str]) -> bool:
        """Serve this version of ``name`` from now on: read and check it (PoolError if the pool cannot serve it;
        the version served so far stays), then load it if pinned, if it replaces a resident version, or if a slot
        is free; otherwise list it for a cold start on its first request. True if it was loaded."""
        prepared = self.pool.prepare(name, folder, metadata)
        servable = Servable(name, Path(folder), dict(checksums), prepared.info)
        with self._cond:
            while name in self._loading or name in self._evicting:
                self._cond.wait()
            self._servable[name] = servable
            self.failures.pop(name, None)
            swap = name in self._lru
            if not (swap or name in self.pinned or self._room()):
                return False
            self._loading.add(name)
        try:
            return self._install(
                prepared, "swap" if swap else "pinned" if name in self.pinned else "eager", None
            )
        finally:
            with self._cond:
                self._loading.discard(name)
                self._cond.notify_all()

    def withdraw(self, name: str) -> None:
        """``name`` is no longer served: forget it, and unload it if resident."""
        with self._cond:
            while name in self._loading or name in self._evicting:
                self._cond.wait()
            self._servable.pop(name, None)
            self.failures.pop(name, None)
            if name not in self._lru:
                return
            del self._lru[name]
            self._evicting.add(name)
        try:
            self.pool.remove(name)
        finally:
            with self._cond:
                self._evicting.discard(name)
                self._cond.notify_all()

    # ------------------------------------------------------------------------------------ the requests' side
    def try_acquire(self, name: str) -> bool:
        """Hold ``name`` resident for one request if it is resident now (never waits); False otherwise."""
        with self._cond:
            if self._closing or name not in self._lru or name in self._evicting:
                return False
            self._pending[name] += 1
            self._lru.move_to_end(name)
            return True

    def acquire(self, name: str, deadline: float | None = None) -> None:
        """Hold ``name`` resident for one request, loading it first if it is not (a cold start). Raises PoolError
        (not served, or its files cannot be loaded), CapacityError (no slot freed before ``deadline``, a
        ``time.monotonic()`` value) or ShuttingDown. Pair with ``release``."""
        while True:
            with self._cond:
                self._check_open()
                if name in self._lru and name not in self._evicting:
                    self._pending[name] += 1
                    self._lru.move_to_end(name)
                    return
                if name in self._loading or name in self._evicting:  # another request is loading it
                    self._wait(deadline, f"adapter {name!r} is still loading")
                    continue
                servable = self._servable.get(name)
                if servable is None:
                    raise PoolError(f"adapter {name!r} is not served")
                self._loading.add(name)
            try:
                started = time.perf_counter()
                prepared = self._read(servable)
                self._install(prepared, "cold", deadline, hold=True, started=started)
                return
            except PoolError as exc:
                with self._cond:
                    self.failures[name] = (_version(servable), str(exc))
                raise
            finally:
                with self._cond:
                    self._loading.discard(name)
                    self._cond.notify_all()

    def release(self, name: str) -> None:
        """A request holding ``name`` is done with it."""
        with self._cond:
            self._pending[name] -= 1
            if self._pending[name] <= 0:
                del self._pending[name]
            self._cond.notify_all()

    def close(self) -> None:
        """Refuse further loads (ShuttingDown) and wake whoever waits for a slot."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    # ------------------------------------------------------------------------------------ loading
    def _read(self, servable: Servable) -> PreparedAdapter:
        """The cached files, checked against their registered sha256, read and checked against the base."""
        problem = checksum_problem(sha256_folder(servable.folder), servable.checksums)
        if problem:
            raise PoolError(
                f"the cached files of {servable.ref} in {servable.folder} changed since they were pulled "
                f"({problem}); delete that folder to pull them again"
            )
        return self.pool.prepare(servable.name, servable.folder, servable.metadata)

    def _install(
        self,
        prepared: PreparedAdapter,
        cause: str,
        deadline: float | None,
        hold: bool = False,
        started: float | None = None,
    ) -> bool:
        """Install ``prepared`` (the caller marked its name loading). A name not resident takes a free slot or,
        for a cold or pinned load, the slot of the least recently used idle adapter, evicted in the same hold of
        the model lock; an eager load finding no free slot is skipped (False). ``hold``: one request holds it.
        ``started``: when its files began to be read (the load's time is counted from there)."""
        name = prepared.info.name
        started = time.perf_counter() if started is None else started
        victim = None
        with self._cond:
            if name not in self._lru:
                while not self._room():
                    if cause == "eager":
                        return False
                    victim = self._victim()
                    if victim is not None:
                        del self._lru[victim]
                        self._evicting.add(victim)
                        break
                    self._wait(deadline, self._full_message())
                self._reserved.add(name)
        try:
            info = self.pool.install(prepared, evict=victim)
        except BaseException:
            with self._cond:
                self._reserved.discard(name)
                if victim is not None:  # not unloaded: it stays resident
                    self._evicting.discard(victim)
                    self._lru[victim] = None
                    self._lru.move_to_end(victim, last=False)
            raise
        with self._cond:
            self._reserved.discard(name)
            if victim is not None:
                self._evicting.discard(victim)
            self._lru[name] = None
            self._lru.move_to_end(name)
            if hold:
                self._pending[name] += 1
        seconds = time.perf_counter() - started
        evicted = self._servable.get(victim) if victim else None
        log.log(
            logging.INFO if cause == "cold" else logging.DEBUG, "loaded %s (%s) in %.0f ms%s", info.metadata.get("ref", name), cause, seconds * 1000,
            f", evicting {evicted.ref if evicted else victim}" if victim else "",
        )  # fmt: skip
        if self.metrics is not None:
            self.metrics.loaded(info, cause, seconds)
            if victim is not None:
                self.metrics.evicted(victim, _version(evicted))
        return True

    def _room(self) -> bool:
        """A slot is free (call under the lock): resident adapters and loads that took a slot count."""
        if self.max_resident is None:
            return True
        return len(self._lru) + len(self._reserved) < self.max_resident

    def _victim(self) -> str | None:
        """The least recently used resident adapter that is not pinned, not loading and has no request."""
        for name in self._lru:
            if name not in self.pinned and not self._pending[name] and name not in self._loading:
                return name
        return None

    def _full_message(self) -> str:
        return (
            f"all {self.max_resident} resident adapters are pinned or answering requests "
            f"({', '.join(self._lru)}); retry, or raise --max-resident"
        )

    def _wait(self, deadline: float | None, what: str) -> None:
        """Wait for a change (call under the lock); CapacityError at ``deadline``, ShuttingDown if closing."""
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise CapacityError(what)
        self._cond.wait(remaining)
        self._check_open()

    def _check_open(self) -> None:
        if self._closing:
            raise ShuttingDown("the server is shutting down")


def _version(servable: Servable | None) -> int | None:
    if servable is None:
        return None
    value = servable.metadata.get("version")
    return int(value) if value else None
