"""The fleet: every ``serve`` replica announces what it serves in the registry, and a promotion can wait until
every live replica serves the new digest.

**Where.** One MLflow run per replica (per life of a replica) in the ``adapter-registry-fleet`` experiment, whose
tags (``entities.FleetTag``) the replica rewrites at each heartbeat, every few seconds and at once when what it
serves changes: its address, base fingerprint and quantisation, the stage it serves, per adapter the version and
weights digest it serves (and its canary's), and per adapter what it cannot serve and why. A run per replica
rather than a registered-model tag per adapter: each replica writes only its own run (no two writers on one
object, no replicas × adapters tags on the models), one call per heartbeat whatever the number of adapters, the
run's status says whether the replica stopped cleanly, and a replica needs EDIT on this experiment only, never on
the registered models it serves.

**Live, stale, stopped.** A replica is live while its last heartbeat is younger than three of its intervals, stale
after that (it crashed, hangs, or cannot reach the registry), stopped once its run ended (a clean shutdown).

**Waiting.** ``wait_for_fleet`` looks at the live replicas of the stage again and again until each one whose base
fingerprint is the version's serves its digest; a replica made for another base (or quantisation, or task) is not
waited for, and one that goes silent is reported lost. A replica that cannot serve the version keeps serving the
previous one and its heartbeat says why: a refusal (the pool refuses its files, the trail does not attest it) fails
the wait at once, naming the replica and the reason; a failed pull or load, which the replica retries at each poll,
fails it once the failure has outlived three of the replica's heartbeats (a passing hiccup does not), or at the
timeout.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from adapter_registry.adapter_folder import weights_digest
from adapter_registry.registry.entities import AdapterVersion, FleetTag
from adapter_registry.registry.store import AdapterStore

__all__ = ["FleetWait", "Problem", "Replica", "Served", "fleet_key", "read_fleet", "wait_for_fleet"]

STALE_AFTER = 3  # heartbeat intervals without one: stale
FAILED_AFTER = 3  # heartbeat intervals a retried failure must last before a wait gives up on the replica
# what MLflow takes in a tag key (a registered name may hold more)
_SAFE_KEY = re.compile(r"^[\w.\- /]+$")


def fleet_key(prefix: str, name: str) -> str:
    """The tag key of ``name`` under ``prefix`` (``FleetTag.SERVES`` ...): the name itself where MLflow takes it
    in a key, else a hash of it (the value always names the adapter)."""
    return prefix + (name if _SAFE_KEY.match(name) else "~" + hashlib.sha256(name.encode()).hexdigest()[:16])


@dataclass(frozen=True)
class Served:
    """An adapter version a replica serves."""

    name: str
    version: int
    digest: str

    def to_tag(self) -> str:
        return json.dumps({"name": self.name, "version": self.version, "digest": self.digest})


@dataclass(frozen=True)
class Problem:
    """A stage holder a replica does not serve: ``refused`` (its files or settings cannot be served here),
    ``failed`` (pulling or loading it failed; retried at the next poll), ``foreign`` (made for another server:
    base, quantisation or task)."""

    name: str
    version: int | None
    reason: str
    kind: Literal["refused", "failed", "foreign"]

    def to_tag(self) -> str:
        return json.dumps(
            {"name": self.name, "version": self.version, "reason": self.reason[:2000], "kind": self.kind}
        )


@dataclass(frozen=True)
class Replica:
    """One replica as its last heartbeat described it."""

    run_id: str
    replica: str
    url: str
    base_fingerprint: str
    base_identity: str
    quantization: str
    stage: str
    heartbeat: float  # unix time
    interval: float
    status: str  # the run's: RUNNING, or FINISHED once the replica stopped
    serves: dict[str, Served] = field(default_factory=dict)
    canaries: dict[str, Served] = field(default_factory=dict)
    problems: dict[str, Problem] = field(default_factory=dict)

    def condition(self, now: float | None = None) -> Literal["live", "stale", "stopped"]:
        if self.status != "RUNNING":
            return "stopped"
        age = (now if now is not None else time.time()) - self.heartbeat
        return "live" if age <= STALE_AFTER * max(self.interval, 1.0) else "stale"

    @classmethod
    def from_run(cls, run: dict[str, Any]) -> Replica:
        tags: dict[str, str] = run["tags"]

        def number(key: str) -> float:
            try:
                return float(tags.get(key) or 0)
            except ValueError:
                return 0.0

        serves: dict[str, Served] = {}
        canaries: dict[str, Served] = {}
        problems: dict[str, Problem] = {}
        for key, value in tags.items():
            try:
                data = json.loads(value) if key.startswith("ar.fleet.") and value.startswith("{") else None
            except ValueError:
                continue
            if not isinstance(data, dict) or "name" not in data:
                continue
            if key.startswith(FleetTag.SERVES):
                serves[data["name"]] = Served(data["name"], int(data["version"]), str(data.get("digest", "")))
            elif key.startswith(FleetTag.CANARY):
                canaries[data["name"]] = Served(
                    data["name"], int(data["version"]), str(data.get("digest", ""))
                )
            elif key.startswith(FleetTag.PROBLEM):
                version = data.get("version")
                problems[data["name"]] = Problem(
                    data["name"], int(version) if version is not None else None, str(data.get("reason", "")),
                    data.get("kind", "failed"),
                )  # fmt: skip
        return cls(
            run_id=run["run_id"], replica=tags.get(FleetTag.REPLICA, run["run_id"]), url=tags.get(FleetTag.URL, ""),
            base_fingerprint=tags.get(FleetTag.BASE_FINGERPRINT, ""), base_identity=tags.get(FleetTag.BASE_IDENTITY, ""),
            quantization=tags.get(FleetTag.QUANTIZATION, ""), stage=tags.get(FleetTag.STAGE, ""),
            heartbeat=number(FleetTag.HEARTBEAT), interval=number(FleetTag.INTERVAL) or 5.0, status=run["status"],
            serves=serves, canaries=canaries, problems=problems,
        )  # fmt: skip

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        now = now if now is not None else time.time()
        return {
            "replica": self.replica, "run_id": self.run_id, "url": self.url, "condition": self.condition(now),
            "heartbeat_age_s": round(now - self.heartbeat, 1), "base_fingerprint": self.base_fingerprint,
            "base_identity": self.base_identity, "quantization": self.quantization, "stage": self.stage,
            "serves": {n: {"version": s.version, "digest": s.digest} for n, s in sorted(self.serves.items())},
            "canaries": {n: {"version": s.version, "digest": s.digest} for n, s in sorted(self.canaries.items())},
            "problems": {n: {"version": p.version, "reason": p.reason, "kind": p.kind}
                         for n, p in sorted(self.problems.items())},
        }  # fmt: skip


def read_fleet(store: AdapterStore, include_ended: bool = False) -> list[Replica]:
    """Every replica that announced itself (running runs; ``include_ended``: stopped ones too), by address."""
    return sorted(
        (Replica.from_run(r) for r in store.fleet_runs(include_ended)),
        key=lambda r: (r.replica, -r.heartbeat),
    )


# ------------------------------------------------------------------------------------------------ waiting
@dataclass
class FleetWait:
    """Where the fleet stands for one version: who serves it, who cannot, who is not there yet, who is skipped."""

    name: str
    version: int
    digest: str
    kind: Literal["serves", "canary"]
    done: list[Replica] = field(default_factory=list)
    failed: list[tuple[Replica, Problem]] = field(default_factory=list)
    pending: list[Replica] = field(default_factory=list)
    skipped: list[tuple[Replica, str]] = field(default_factory=list)  # not waited for, and why
    lost: list[Replica] = field(default_factory=list)  # live when the wait began, silent since
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.pending

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapter": self.name, "version": self.version, "digest": self.digest, "kind": self.kind, "ok": self.ok,
            "seconds": round(self.seconds, 2), "timed_out": self.timed_out,
            "done": [r.replica for r in self.done],
            "failed": [{"replica": r.replica, "url": r.url, "kind": p.kind, "reason": p.reason} for r, p in self.failed],
            "pending": [{"replica": r.replica, "url": r.url, "serves": _serving(r, self.name, self.kind)}
                        for r in self.pending],
            "skipped": [{"replica": r.replica, "why": why} for r, why in self.skipped],
            "lost": [r.replica for r in self.lost],
        }  # fmt: skip


def _serving(replica: Replica, name: str, kind: str) -> str | None:
    held = (replica.serves if kind == "serves" else replica.canaries).get(name)
    return None if held is None else f"{held.version}@{held.digest}"


def look(
    replicas: list[Replica], version: AdapterVersion, kind: Literal["serves", "canary"], stage: str,
    now: float | None = None,
) -> FleetWait:  # fmt: skip
    """One look at the fleet for ``version`` (``kind`` canary: served as the adapter's canary)."""
    now = now if now is not None else time.time()
    digest = weights_digest(version.checksums)
    state = FleetWait(version.name, version.version, digest, kind)
    for replica in replicas:
        if replica.condition(now) != "live":
            continue
        if replica.stage != stage:
            state.skipped.append((replica, f"serves stage {replica.stage!r}"))
            continue
        if replica.base_fingerprint != version.base_fingerprint:
            state.skipped.append((replica, f"serves base {replica.base_fingerprint[:19]}…, the version was "
                                           f"trained on {version.base_fingerprint[:19]}…"))  # fmt: skip
            continue
        held = (replica.serves if kind == "serves" else replica.canaries).get(version.name)
        problem = replica.problems.get(version.name if kind == "serves" else f"{version.name}:canary")
        if held is not None and held.version == version.version and held.digest == digest:
            state.done.append(replica)
        elif problem is not None and problem.version == version.version and problem.kind == "foreign":
            state.skipped.append((replica, f"made for another server: {problem.reason}"))
        elif problem is not None and problem.version == version.version:
            state.failed.append((replica, problem))
        else:
            state.pending.append(replica)
    return state


def wait_for_fleet(
    store: AdapterStore,
    version: AdapterVersion,
    *,
    kind: Literal["serves", "canary"] = "serves",
    stage: str = "production",
    timeout: float = 120.0,
    interval: float = 1.0,
    on_look: Callable[[FleetWait], None] | None = None,
) -> FleetWait:
    """Look at the fleet every ``interval`` seconds until every live replica of ``stage`` on ``version``'s base
    serves it (``kind`` canary: as its adapter's canary), one reports it cannot, or ``timeout`` passes."""
    started = time.monotonic()
    first: set[str] | None = None
    failing_since: dict[str, float] = {}  # run id -> when its retried failure was first seen
    while True:
        replicas = read_fleet(store)
        state = look(replicas, version, kind, stage)
        live = {r.run_id for r in replicas if r.condition() == "live"}
        if first is None:
            first = live
        state.lost = [r for r in replicas if r.run_id in first - live]
        now = time.monotonic()
        state.seconds = now - started
        state.timed_out = state.seconds >= timeout
        retried = [(r, p) for r, p in state.failed if p.kind == "failed"]
        for replica, _ in retried:
            failing_since.setdefault(replica.run_id, now)
        for gone in set(failing_since) - {r.run_id for r, _ in retried}:
            del failing_since[gone]
        for replica, problem in retried:  # a retried failure gets three heartbeats to clear
            patience = max(FAILED_AFTER * replica.interval, 3.0)
            if not state.timed_out and now - failing_since[replica.run_id] < patience:
                state.failed.remove((replica, problem))
                state.pending.append(replica)
        if on_look is not None:
            on_look(state)
        if state.ok or state.failed or state.timed_out:
            return state
        time.sleep(interval)
