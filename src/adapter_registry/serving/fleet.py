"""This replica's heartbeat in the registry's fleet (``registry.fleet``): what it serves, where everyone sees it.

At start-up the replica opens its run in the ``adapter-registry-fleet`` experiment; then a thread rewrites the
run's tags every ``interval`` seconds, and at once when what the replica serves changed after a registry poll (so a
``promote --wait`` hears of a swap as soon as it is done): per adapter the version and weights digest served (a
canary's candidate under ``ar.fleet.canary.``), and per adapter what cannot be served and why (refused files,
failed pulls or loads, versions made for another server). On shutdown the run ends. A heartbeat that cannot be
written is logged (once per distinct error) and serving goes on: the fleet is for operators, not in the request
path.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from adapter_registry.registry.entities import FleetTag
from adapter_registry.registry.fleet import Problem, Served, fleet_key
from adapter_registry.serving.canary import CANARY_SUFFIX

if TYPE_CHECKING:
    from adapter_registry.registry.store import AdapterStore
    from adapter_registry.serving.sync import RegistrySync

__all__ = ["FleetHeartbeat", "fleet_snapshot"]

log = logging.getLogger("adapter_registry.serving")


def fleet_snapshot(sync: RegistrySync) -> dict[str, str]:
    """The heartbeat tags of what ``sync`` serves now, and of what it cannot serve (call from the poller: the
    sync's tables change in that thread only; a cold load failing meanwhile is read again)."""
    for _ in range(3):
        try:
            return _snapshot(sync)
        except RuntimeError:  # a request thread changed the residency's failures while they were read
            continue
    return _snapshot(sync)


def _snapshot(sync: RegistrySync) -> dict[str, str]:
    tags: dict[str, str] = {}
    for servable in sync.residency.servables():
        name = servable.metadata.get("adapter", servable.name)
        served = Served(name, int(servable.metadata.get("version", 0)), servable.metadata.get("digest", ""))
        prefix = FleetTag.CANARY if servable.name.endswith(CANARY_SUFFIX) else FleetTag.SERVES
        tags[fleet_key(prefix, name)] = served.to_tag()
    problems: dict[str, Problem] = {}
    for slot, (version, reason) in list(sync.refused.items()):
        problems[slot] = Problem(slot, version, reason, "foreign" if slot in sync.foreign else "refused")
    failures: list[tuple[str, tuple[int | None, str]]] = [
        *sync.residency.failures.items(),
        *sync.failed.items(),
    ]
    for slot, (failed_version, error) in failures:
        problems[slot] = Problem(slot, failed_version, error, "failed")
    for slot, problem in problems.items():
        tags[fleet_key(FleetTag.PROBLEM, slot)] = problem.to_tag()
    return tags


class FleetHeartbeat:
    """Announces one replica in the fleet and keeps its tags current (a thread)."""

    def __init__(
        self,
        store: AdapterStore,
        *,
        replica: str,
        url: str,
        base_fingerprint: str,
        base_identity: str,
        quantization: str,
        stage: str,
        interval: float = 5.0,
    ) -> None:
        if interval <= 0:
            raise ValueError(
                f"--heartbeat-seconds {interval} must be positive (or 0 to switch heartbeats off)"
            )
        self.store = store
        self.replica = replica
        self.interval = interval
        self.fixed = {
            FleetTag.REPLICA: replica, FleetTag.URL: url, FleetTag.BASE_FINGERPRINT: base_fingerprint,
            FleetTag.BASE_IDENTITY: base_identity, FleetTag.QUANTIZATION: quantization, FleetTag.STAGE: stage,
            FleetTag.INTERVAL: f"{interval:g}", FleetTag.STATE: "serving",
        }  # fmt: skip
        self.run_id = ""
        self.beats = 0
        self._wanted: dict[str, str] = {}
        self._written: dict[str, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error = ""

    def update(self, snapshot: dict[str, str]) -> None:
        """What the replica serves now; a change is written at once."""
        with self._lock:
            self._wanted = dict(snapshot)
            if self._wanted != self._written:
                self._wake.set()

    def start(self) -> None:
        """Open this replica's run and start beating (a replica that cannot announce itself still serves)."""
        with self._lock:
            wanted = dict(self._wanted)
        try:
            self.run_id = self.store.fleet_join(self.replica, {**self.fixed, **wanted, **self._now()})
        except Exception as exc:
            log.warning(
                "this replica is not announced in the fleet (promote --wait will not see it): %s", exc
            )
            return
        self._written = wanted
        self.beats = 1
        self._thread = threading.Thread(target=self._run, name="fleet-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and end the run (the replica leaves the fleet)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.run_id:
            try:
                self.store.fleet_leave(self.run_id, {FleetTag.STATE: "stopped", **self._now()})
            except Exception as exc:
                log.warning("could not end this replica's fleet run %s: %s", self.run_id, exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if not self._stop.is_set():
                self.beat()

    def beat(self) -> None:
        """Write one heartbeat: the changed tags and the time, removing what is no longer served."""
        with self._lock:
            wanted = dict(self._wanted)
        changed = {k: v for k, v in wanted.items() if self._written.get(k) != v}
        removed = set(self._written) - set(wanted)
        try:
            self.store.fleet_beat(self.run_id, {**changed, **self._now()}, removed)
        except Exception as exc:
            if str(exc) != self._last_error:
                log.warning("fleet heartbeat failed (retried every %g s): %s", self.interval, exc)
            self._last_error = str(exc)
            return
        self._last_error = ""
        self._written = wanted
        self.beats += 1

    @staticmethod
    def _now() -> dict[str, str]:
        return {FleetTag.HEARTBEAT: f"{time.time():.3f}"}
