"""The append-only history of stage changes, kept as one MLflow run per event in a dedicated experiment.

Aliases and tags are overwritten in MLflow, so each stage change (and each refused one) is written once, as a
new finished run in ``adapter-registry-audit`` whose tags hold the whole event. Nothing in this project updates
or deletes those runs. Each event also carries a hash chain (``hash = sha256(prev_hash + event)``) with a
sequence number per adapter, so an event deleted or rewritten behind our back (MLflow UI, REST) is reported
by ``audit`` instead of silently changing history.

Two ways of writing it, chosen by the registry (``AuditLog.signed``):

- **Signed, by the tracking server** (a server running the project's auth app, ``registry.auth_app``): the
  client sends the event to the server, which sets its actor (the user it authenticated), its time and its
  sequence number, signs it (``mac = HMAC-SHA256(key, prev_mac + event)``, a key only the server host holds),
  writes the run itself and records the chain's last link (its *head*) on the server host. No client can write
  the audit experiment over HTTP. Reading asks the server, which checks every MAC and the head: an event
  written around the server (forged or inserted), edited, deleted from the middle or from the end is reported.
- **Unsigned, by the client** (a sqlite file, or a server without the app): the client appends the run itself,
  holding the adapter's writer lock (``registry.locking``) so concurrent writers take turns and never fork the
  chain (a fork made without the lock is still reported, as a duplicate sequence number). The chain has no
  secret: it shows a rewritten event or one removed from the middle, not who wrote an event, nor an event
  appended by anyone who can write the registry, nor the removal of the last one (``UNSIGNED``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from adapter_registry.checksums import files_digest
from adapter_registry.registry.entities import PROMOTION_STAGES, AdapterVersion, AuditTag, StageChange
from adapter_registry.registry.stages import StageCheck, check_stages
from adapter_registry.registry.store import AdapterStore

SIGNED = (
    "signed by the tracking server (adapter-registry auth app): each event's actor is the user the server "
    "authenticated and its time the server's; an event forged, inserted, edited or deleted (the last one too) "
    "is reported"
)
UNSIGNED = (
    "unsigned (a local registry, or a server without the adapter-registry auth app): the hash chain reports an "
    "event rewritten or removed from the middle; it cannot prove who acted (an event's actor is what its writer "
    "claimed), nor reveal an event appended by anyone who can write the registry, nor the removal of the last one"
)


@dataclass(frozen=True)
class AuditTrail:
    """Every event of one adapter in order, and what does not check out in the chain."""

    model: str
    events: tuple[StageChange, ...]
    problems: tuple[str, ...]
    last_hash: str = ""  # the hash the next event chains to
    signed: bool = False  # written and checked by the tracking server (SIGNED), else UNSIGNED

    @property
    def intact(self) -> bool:
        return not self.problems

    @property
    def assurance(self) -> str:
        """What this trail can and cannot prove, in one sentence."""
        return SIGNED if self.signed else UNSIGNED

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "events": [e.to_dict() for e in self.events], "problems": list(self.problems),
                "last_hash": self.last_hash, "signed": self.signed}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditTrail:
        return cls(
            model=str(data["model"]), events=tuple(StageChange.from_dict(e) for e in data.get("events", [])),
            problems=tuple(str(p) for p in data.get("problems", [])), last_hash=str(data.get("last_hash", "")),
            signed=bool(data.get("signed", False)),
        )  # fmt: skip


@dataclass(frozen=True)
class Head:
    """The last link of an adapter's signed chain, as the server recorded it when it signed that event."""

    seq: int
    mac: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "mac": self.mac, "hash": self.hash}


def _canonical(event: StageChange) -> str:
    data = event.to_dict()
    data.pop("verified")
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _hash(prev_hash: str, event: StageChange) -> str:
    return hashlib.sha256((prev_hash + _canonical(event)).encode()).hexdigest()


def _mac(key: bytes, prev_mac: str, event: StageChange) -> str:
    return hmac.new(key, (prev_mac + _canonical(event)).encode(), hashlib.sha256).hexdigest()


def link(event: StageChange, prev_hash: str, key: bytes | None = None, prev_mac: str = "") -> dict[str, str]:
    """The tags of the run that records ``event`` (its ``seq`` set) after the link ``prev_hash`` (and, signed
    with ``key``, after ``prev_mac``)."""
    tags = {
        AuditTag.MODEL: event.model,
        AuditTag.VERSION: str(event.version),
        AuditTag.SEQ: str(event.seq),
        AuditTag.EVENT: _canonical(event),
        AuditTag.PREVIOUS_HASH: prev_hash,
        AuditTag.HASH: _hash(prev_hash, event),
    }
    if key is not None:
        tags[AuditTag.PREVIOUS_MAC] = prev_mac
        tags[AuditTag.MAC] = _mac(key, prev_mac, event)
    return tags


Runs = list[tuple[dict[str, str], bool]]  # (tags of an audit run, whether it was deleted in MLflow)


def _rows(model: str, runs: Runs) -> tuple[list[tuple[StageChange, dict[str, str], bool]], list[str]]:
    rows, problems = [], []
    for tags, deleted in runs:
        try:
            event = StageChange.from_dict(json.loads(tags[AuditTag.EVENT]))
        except (KeyError, ValueError, TypeError) as exc:
            problems.append(f"an audit run of {model!r} is unreadable ({exc})")
            continue
        rows.append((event, tags, deleted))
    rows.sort(key=lambda row: (row[0].seq, row[0].when))
    return rows, problems


def chain(model: str, runs: Runs) -> AuditTrail:
    """The unsigned trail of ``model`` from its audit runs: each event checked against the hash chain."""
    rows, problems = _rows(model, runs)
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


def _span(first: int, last: int) -> str:
    return f"event {first}" if first == last else f"events {first} to {last}"


def signed_chain(model: str, runs: Runs, key: bytes, head: Head | None) -> AuditTrail:
    """The signed trail of ``model`` (run by the server, which holds ``key`` and the ``head`` it recorded).

    An event is verified when its MAC is the server's, it follows the previous signed event (sequence number and
    MAC) and it was not deleted in MLflow. An event without a valid MAC was written around the server: it is
    named, kept unverified and skipped. The last signed event must be the recorded head: fewer means events were
    deleted from the end.
    """
    rows, problems = _rows(model, runs)
    events: list[StageChange] = []
    prev_mac = prev_hash = ""
    expected = 1
    for event, tags, deleted in rows:
        mac, claimed = tags.get(AuditTag.MAC, ""), tags.get(AuditTag.PREVIOUS_MAC, "")
        if not mac or not hmac.compare_digest(mac, _mac(key, claimed, event)):
            problems.append(
                f"event {event.seq} ({event.action} of version {event.version} to {event.to_stage}, by "
                f"{event.who!r}) is not signed by the tracking server: it was written around the server (forged, "
                "inserted or edited)"
            )
            events.append(replace(event, verified=False))
            continue
        ok = True
        if event.seq < expected:
            problems.append(f"event {event.seq} appears twice")
            ok = False
        elif event.seq > expected:
            problems.append(f"{_span(expected, event.seq - 1)} of {model!r} deleted (the server signed them)")
            ok = False
        elif claimed != prev_mac:
            problems.append(f"event {event.seq} does not follow event {expected - 1} as the server signed it")
            ok = False
        if deleted:
            problems.append(f"event {event.seq} was deleted in MLflow (kept here, marked unverified)")
            ok = False
        events.append(replace(event, verified=ok))
        prev_mac, prev_hash, expected = mac, tags.get(AuditTag.HASH, ""), max(expected, event.seq + 1)
    last = expected - 1
    if head is None:
        if last:
            problems.append(
                f"the tracking server has no record of the last event of {model!r} (its audit heads file was lost "
                "or replaced): a deletion at the end cannot be ruled out"
            )
    elif head.seq > last:
        problems.append(
            f"{_span(last + 1, head.seq)} of {model!r} deleted: the tracking server signed {head.seq} event(s), the "
            f"trail holds {last}"
        )
    elif head.seq != last or not hmac.compare_digest(head.mac, prev_mac):
        problems.append(
            f"the last event of {model!r} is not the one the tracking server recorded (event {head.seq})"
        )
    return AuditTrail(model, tuple(events), tuple(problems), last_hash=prev_hash, signed=True)


class AuditLog:
    """Append and read the audit trail of an adapter through the store: signed by its tracking server where it
    runs the adapter-registry auth app, else written by this client."""

    def __init__(self, store: AdapterStore) -> None:
        self.store = store

    @property
    def signed(self) -> bool:
        """Whether the tracking server writes and signs the trail (``registry.auth_app``)."""
        return self.store.server_app() is not None

    def append(self, event: StageChange) -> StageChange:
        """Write ``event`` as the next link of its adapter's chain; returns it as recorded (its sequence number;
        on a signing server also its actor and time, as the server set them).

        Unsigned, the chain is re-read under the adapter's writer lock (which a promotion already holds)."""
        if self.signed:
            answer = self.store.app_call(
                "POST", "audit/append", {"event": event.to_dict()}, f"auditing {event.model}"
            )
            return StageChange.from_dict(answer["event"])
        with self.store.writer_lock(event.model):
            trail = self.read(event.model)
            event = replace(event, seq=max((e.seq for e in trail.events), default=0) + 1, verified=True)
            tags = link(event, trail.last_hash)
            self.store.append_audit_run(f"{event.model}#{event.seq} {event.action} v{event.version}", tags)
        return event

    def read(self, model: str) -> AuditTrail:
        """The events of ``model`` ordered by sequence number, each marked verified or not."""
        if self.signed:
            return self._signed(model).get(model) or AuditTrail(model, (), (), signed=True)
        return chain(model, self.store.audit_runs(model))

    def read_all(self) -> dict[str, AuditTrail]:
        """Every adapter's trail, read with one search (what ``list`` needs to check stage holders)."""
        if self.signed:
            return self._signed(None)
        runs: dict[str, Runs] = {}
        for tags, deleted in self.store.audit_runs(None):
            runs.setdefault(tags.get(AuditTag.MODEL, ""), []).append((tags, deleted))
        return {model: chain(model, rows) for model, rows in runs.items() if model}

    def _signed(self, model: str | None) -> dict[str, AuditTrail]:
        query = {"model": model} if model is not None else {}
        answer = self.store.app_call(
            "GET", "audit/trails", query, f"reading the audit trail of {model or 'every adapter'!r}"
        )
        return {name: AuditTrail.from_dict(data) for name, data in answer.get("trails", {}).items()}

    def stage_checks(
        self,
        model: str,
        trail: AuditTrail | None = None,
        holders: Mapping[str, AdapterVersion | None] | None = None,
    ) -> dict[str, StageCheck]:
        """Each promotion stage of ``model``: its alias holder checked against the trail (``registry.stages``).
        ``holders``: each promotion stage's holder where the caller has just read them."""
        trail = trail or self.read(model)
        if holders is None:
            holders = {s: self.store.holder(model, s) for s in PROMOTION_STAGES}
        return check_stages(
            model, {s: v.version if v else None for s, v in holders.items()}, trail.events,
            digests={s: files_digest(v.checksums) for s, v in holders.items() if v is not None},
        )  # fmt: skip
