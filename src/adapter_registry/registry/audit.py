"""The append-only history of stage changes, kept as one MLflow run per event in a dedicated experiment.

Aliases and tags are overwritten in MLflow, so each stage change (and each refused one) is written once, as a
new finished run in ``adapter-registry-audit`` whose tags hold the whole event. Nothing in this project updates
or deletes those runs. Each event also carries a hash chain (``hash = sha256(prev_hash + event)``) with a
sequence number per adapter, so an event deleted or rewritten behind our back (MLflow UI, REST) is reported
by ``audit`` instead of silently changing history. An append re-reads the chain holding the adapter's writer
lock (``registry.locking``), so concurrent writers take turns and never fork it; a fork made without the lock
(an older client, a hand-written run) is still reported, as a duplicate sequence number, never hidden.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

from adapter_registry.checksums import files_digest
from adapter_registry.registry.entities import PROMOTION_STAGES, AuditTag, StageChange
from adapter_registry.registry.stages import StageCheck, check_stages
from adapter_registry.registry.store import AdapterStore


@dataclass(frozen=True)
class AuditTrail:
    """Every event of one adapter in order, and what does not check out in the chain."""

    model: str
    events: tuple[StageChange, ...]
    problems: tuple[str, ...]
    last_hash: str = ""  # the hash the next event chains to

    @property
    def intact(self) -> bool:
        return not self.problems


def _canonical(event: StageChange) -> str:
    data = event.to_dict()
    data.pop("verified")
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _hash(prev_hash: str, event: StageChange) -> str:
    return hashlib.sha256((prev_hash + _canonical(event)).encode()).hexdigest()


class AuditLog:
    """Append and read the audit trail of an adapter through the store."""

    def __init__(self, store: AdapterStore) -> None:
        self.store = store

    def append(self, event: StageChange) -> StageChange:
        """Write ``event`` as the next link of its adapter's chain (re-read under the adapter's writer lock, which a
        promotion already holds); returns it with its sequence number."""
        with self.store.writer_lock(event.model):
            trail = self.read(event.model)
            last_seq = max((e.seq for e in trail.events), default=0)
            prev_hash = trail.last_hash
            event = replace(event, seq=last_seq + 1, verified=True)
            tags = {
                AuditTag.MODEL: event.model,
                AuditTag.VERSION: str(event.version),
                AuditTag.SEQ: str(event.seq),
                AuditTag.EVENT: _canonical(event),
                AuditTag.PREVIOUS_HASH: prev_hash,
                AuditTag.HASH: _hash(prev_hash, event),
            }
            self.store.append_audit_run(f"{event.model}#{event.seq} {event.action} v{event.version}", tags)
        return event

    def read(self, model: str) -> AuditTrail:
        """The events of ``model`` ordered by sequence number, each marked verified or not."""
        return self._trail(model, self.store.audit_runs(model))

    def read_all(self) -> dict[str, AuditTrail]:
        """Every adapter's trail, read with one search (what ``list`` needs to check stage holders)."""
        runs: dict[str, list[tuple[dict[str, str], bool]]] = {}
        for tags, deleted in self.store.audit_runs(None):
            runs.setdefault(tags.get(AuditTag.MODEL, ""), []).append((tags, deleted))
        return {model: self._trail(model, rows) for model, rows in runs.items() if model}

    def stage_checks(self, model: str, trail: AuditTrail | None = None) -> dict[str, StageCheck]:
        """Each promotion stage of ``model``: its alias holder checked against the trail (``registry.stages``)."""
        trail = trail or self.read(model)
        holders = {s: self.store.holder(model, s) for s in PROMOTION_STAGES}
        return check_stages(
            model, {s: v.version if v else None for s, v in holders.items()}, trail.events,
            digests={s: files_digest(v.checksums) for s, v in holders.items() if v is not None},
        )  # fmt: skip

    @staticmethod
    def _trail(model: str, runs: list[tuple[dict[str, str], bool]]) -> AuditTrail:
        rows = []
        problems: list[str] = []
        for tags, deleted in runs:
            try:
                event = StageChange.from_dict(json.loads(tags[AuditTag.EVENT]))
            except (KeyError, ValueError, TypeError) as exc:
                problems.append(f"an audit run of {model!r} is unreadable ({exc})")
                continue
            rows.append((event, tags, deleted))
        rows.sort(key=lambda row: (row[0].seq, row[0].when))
        events: list[StageChange] = []
        prev_hash = ""
        expected_seq = 1
        for event, tags, deleted in rows:
            ok = True
            if event.seq != expected_seq:
                what = "appears twice (concurrent writers)" if event.seq < expected_seq else "is missing"
                problems.append(f"event {expected_seq if event.seq > expected_seq else event.seq} {what}")
                ok = False
            if deleted:
                problems.append(f"event {event.seq} was deleted in MLflow (kept here, marked unverified)")
                ok = False
            if tags.get(AuditTag.PREVIOUS_HASH, "") != prev_hash or tags.get(AuditTag.HASH) != _hash(
                tags.get(AuditTag.PREVIOUS_HASH, ""), event
            ):
                problems.append(f"event {event.seq} was rewritten or the chain before it was broken")
                ok = False
            events.append(replace(event, verified=ok))
            prev_hash = tags.get(AuditTag.HASH, "")
            expected_seq = event.seq + 1
        return AuditTrail(model=model, events=tuple(events), problems=tuple(problems), last_hash=prev_hash)
