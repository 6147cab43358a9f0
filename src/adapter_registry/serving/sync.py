"""Keeping the served adapters equal to the registry: where adapters come from, and one sync per poll.

An :class:`AdapterSource` says which version of each adapter holds the served stage and fetches its files;
:class:`RegistrySource` is the MLflow registry through ``AdapterStore`` (files pulled with their registered sha256
checked). :class:`RegistrySync` loads new and moved stage holders into the pool, unloads adapters that left the
stage, and keeps the previous version serving when a new one is refused or fails to load.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from adapter_registry.registry.entities import AdapterVersion
from adapter_registry.serving.pool import AdapterPool, PoolError

if TYPE_CHECKING:
    from adapter_registry.registry.store import AdapterStore

__all__ = ["SERVED_TASK", "AdapterSource", "RegistrySource", "RegistrySync"]

log = logging.getLogger("adapter_registry.serving")
SERVED_TASK = "causal_lm_sft"


# ------------------------------------------------------------------------------------------------ sources
class AdapterSource(Protocol):
    """Where served adapters come from."""

    def versions(self) -> list[AdapterVersion]:
        """The version of each adapter that holds the served stage (one per adapter name)."""
        ...

    def fetch(self, version: AdapterVersion, dest: Path) -> Path:
        """The version's adapter files, checked, in the new folder ``dest``; returns the folder."""
        ...


class RegistrySource:
    """The MLflow registry: stage holders are aliases; files are pulled with their registered sha256 checked."""

    def __init__(self, store: AdapterStore, stage: str = "production") -> None:
        self.store = store
        self.stage = stage

    def versions(self) -> list[AdapterVersion]:
        holders = (self.store.holder(name, self.stage) for name in self.store.list_models())
        return [v for v in holders if v is not None]

    def fetch(self, version: AdapterVersion, dest: Path) -> Path:
        self.store.pull(version.ref, dest)
        return dest


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
    _unservable: dict[tuple[str, int], str] = field(default_factory=dict)  # files the pool refused
    _lock: threading.Lock = field(default_factory=threading.Lock)

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
                wanted = self.source.versions()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("registry poll failed, serving what is loaded: %s", self.last_error)
                return
            names = {v.name for v in wanted}
            for version in wanted:
                self._apply(version)
            for info in self.pool.adapters():
                if info.name not in names:
                    self.pool.remove(info.name)
                    log.info("unloaded %s: it no longer holds the stage", _ref(info))
            for table in (self.refused, self.failed):
                for gone in set(table) - names:
                    del table[gone]
            self.last_sync = dt.datetime.now(dt.UTC)
            self.last_error = None

    def stale(self) -> dict[str, int]:
        """Adapter name -> the stage holder's version, for adapters still served by an older version."""
        pending = {**self.failed, **self.refused}
        return {a.name: pending[a.name][0] for a in self.pool.adapters() if a.name in pending}

    def _apply(self, version: AdapterVersion) -> None:
        current = next((a for a in self.pool.adapters() if a.name == version.name), None)
        reason = self.refusal(version) or self._unservable.get((version.name, version.version))
        if reason:
            if self.refused.get(version.name) != (version.version, reason):
                log.warning("refused %s: %s (serving %s)", version.ref, reason, _ref(current))
            self.refused[version.name] = (version.version, reason)
            return
        self.refused.pop(version.name, None)
        if current is not None and current.metadata.get("version") == str(version.version):
            return
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="adapter-pull-") as tmp:
            try:
                folder = self.source.fetch(version, Path(tmp) / "adapter")
                self.pool.add(version.name, folder, metadata=_metadata(version))
            except PoolError as exc:  # the files are what was registered, and the pool cannot serve them
                self._unservable[(version.name, version.version)] = str(exc)
                self.refused[version.name] = (version.version, str(exc))
                log.warning("refused %s: %s (serving %s)", version.ref, exc, _ref(current))
                return
            except Exception as exc:  # pull failed: keep serving the old version; retry at the next poll
                error = f"{type(exc).__name__}: {exc}"
                if self.failed.get(version.name) != (version.version, error):
                    log.error("could not load %s, still serving %s: %s", version.ref, _ref(current), error)
                self.failed[version.name] = (version.version, error)
                return
        self.failed.pop(version.name, None)
        log.info(
            "loaded %s in %.2f s (replacing %s)", version.ref, time.perf_counter() - started, _ref(current)
        )


def _metadata(version: AdapterVersion) -> dict[str, str]:
    return {
        "version": str(version.version),
        "ref": version.ref,
        "fingerprint": version.base_fingerprint,
        "loaded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _ref(info: Any) -> str:
    return "nothing" if info is None else str(info.metadata.get("ref", info.name))
