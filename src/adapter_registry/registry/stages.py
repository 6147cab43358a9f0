"""Who holds each stage, checked rather than mirrored: the registry's aliases against the audit trail.

The registry (its aliases) is the one truth of which version holds a stage: whatever moved an alias, this CLI,
MLflow's UI, its REST API or another tool, every reader sees the move. Whether that holder may be trusted is a
second question, answered by the audit trail: a holder is *attested* when the last verified, audited promotion or
rollback into that stage placed it there (every such event went through the gates, or was an audited, reasoned
``--force``). A holder that no such event placed (an alias moved outside adapter-registry, or an event that fails
the hash chain) is *unattested*: ``list``/``show`` mark it, ``audit`` reports it and exits non-zero, and
``serve`` keeps serving the last attested version.

The same replay of the trail answers "which version held production at time T" (``history --at``).

A canary (``registry.canary``) is attested the same way: the ``canary`` alias holder is served beside production
only while the last verified, gate-checked ``canary_start`` of that version is not closed by a later
``canary_promote``, ``canary_rollback`` or ``canary_stop`` (``open_canary``), and its files are the ones the start
recorded. Canary events place nothing in a stage: ``replay`` skips them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from adapter_registry.registry.entities import PROMOTION_STAGES, StageChange

PLACING_ACTIONS = ("promote", "rollback")  # events that put a version into a stage
RETIRE = "retire"  # an event that empties a stage (its holder is archived)
CANARY_START = "canary_start"  # a version starts taking a share of production traffic
CANARY_ENDS = ("canary_promote", "canary_rollback", "canary_stop")  # events that close the running canary


@dataclass(frozen=True)
class Placement:
    """A version a verified audit event put into a stage, and that event."""

    version: int
    event: StageChange


def replay(events: Iterable[StageChange], until: dt.datetime | None = None) -> dict[str, Placement]:
    """Stage -> the version the audit trail says holds it (after every verified event up to ``until``).

    A promotion puts its version into ``to_stage`` and takes it out of the stage it left; a rollback gives the
    stage back to its version (the replaced one is archived); a retirement empties the stage. Refusals change
    nothing. An unverified event (the
    hash chain does not check out there: rewritten, inserted, or a concurrent fork) places nothing, nor does one
    whose gates did not all pass unless it was an audited ``--force`` with a reason.
    """
    state: dict[str, Placement] = {}
    for event in sorted(events, key=lambda e: (e.seq, e.when)):
        if until is not None and event.when > until:
            break
        if event.verified and event.action == RETIRE:
            held = state.get(event.from_stage)
            if held is not None and held.version == event.version:
                del state[event.from_stage]
            continue
        if not event.verified or event.action not in PLACING_ACTIONS:
            continue
        if not all(g.passed for g in event.gates) and not (event.forced and event.reason.strip()):
            continue
        left = state.get(event.from_stage)
        if event.action == "promote" and left is not None and left.version == event.version:
            del state[event.from_stage]
        state[event.to_stage] = Placement(event.version, event)
    return state


@dataclass(frozen=True)
class StageCheck:
    """One stage of one adapter: the alias holder, the attested holder, and whether they agree."""

    model: str
    stage: str
    holder: int | None  # the version the alias points at (None: nobody holds the stage)
    attested: int | None  # the version the last verified promotion/rollback into the stage placed
    event: StageChange | None = None  # that event
    files_changed: bool = False  # the holder's registered files are not the ones its promotion placed

    @property
    def ok(self) -> bool:
        return self.holder == self.attested and not self.files_changed

    @property
    def problem(self) -> str | None:
        """Why the holder is not trusted, in one line; None when it is attested (or the stage is empty)."""
        if self.ok:
            return None
        if self.holder is None:
            return (
                f"{self.model}@{self.stage} is held by nobody, but the last audited promotion placed version "
                f"{self.attested} there: the alias was deleted outside adapter-registry (MLflow UI, REST or another "
                "tool)"
            )
        if self.files_changed and self.event is not None:
            return (
                f"{self.model}@{self.stage}: the registered files of version {self.holder} changed since its audited "
                f"promotion (event {self.event.seq} placed {self.event.digest[:19]}…): its sha256 tags and artifacts "
                "were edited outside adapter-registry"
            )
        placed = (
            f"the last audited promotion placed version {self.attested}"
            if self.attested is not None
            else "no audited promotion placed any version there"
        )
        return (
            f"{self.model}@{self.stage} is held by version {self.holder}, which no audited, gate-checked promotion "
            f"placed ({placed}): the alias was moved outside adapter-registry (MLflow UI, REST or another tool)"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model, "stage": self.stage, "holder": self.holder, "attested": self.attested,
            "ok": self.ok, "problem": self.problem,
            "placed_by": None if self.event is None else {"seq": self.event.seq, "who": self.event.who,
                                                           "when": self.event.when.isoformat()},
        }  # fmt: skip


def check_stages(
    model: str,
    holders: dict[str, int | None],
    events: Sequence[StageChange],
    stages: Sequence[str] = PROMOTION_STAGES,
    digests: dict[str, str] | None = None,
) -> dict[str, StageCheck]:
    """Each promotion stage's alias holder (``holders``: stage -> version) checked against the audit trail, and,
    where ``digests`` gives the holder's current ``files_digest``, its files against the ones its event placed."""
    placed = replay(events)
    out = {}
    for stage in stages:
        placement = placed.get(stage)
        holder = holders.get(stage)
        recorded = placement.event.digest if placement else ""
        current = (digests or {}).get(stage, "")
        out[stage] = StageCheck(
            model=model,
            stage=stage,
            holder=holder,
            attested=placement.version if placement else None,
            event=placement.event if placement else None,
            files_changed=bool(recorded and current and placement and placement.version == holder
                               and recorded != current),
        )  # fmt: skip
    return out


def held_at(events: Iterable[StageChange], when: dt.datetime) -> dict[str, Placement]:
    """Stage -> the version that held it at ``when``, as the verified audit trail tells it."""
    return replay(events, until=when)


def _attested(event: StageChange) -> bool:
    """Verified, and every gate passed or an audited ``--force`` with a reason."""
    return event.verified and (
        all(g.passed for g in event.gates) or (event.forced and bool(event.reason.strip()))
    )


def open_canary(events: Iterable[StageChange]) -> StageChange | None:
    """The ``canary_start`` event of the canary running now, as the verified trail tells it (None: none runs)."""
    running: StageChange | None = None
    for event in sorted(events, key=lambda e: (e.seq, e.when)):
        if event.action == CANARY_START and _attested(event):
            running = event
        elif event.action in CANARY_ENDS and event.verified and running and event.version == running.version:
            running = None
    return running


@dataclass(frozen=True)
class CanaryCheck:
    """The ``canary`` alias of one adapter against the trail's running canary."""

    model: str
    holder: int | None  # the version the canary alias points at
    start: StageChange | None  # the running canary's start event (None: no canary runs)
    files_changed: bool = False  # the holder's registered files are not the ones the start recorded

    @property
    def ok(self) -> bool:
        attested = self.start.version if self.start is not None else None
        return self.holder == attested and not self.files_changed

    @property
    def problem(self) -> str | None:
        if self.ok:
            return None
        if self.start is None:
            return (
                f"{self.model}@canary is held by version {self.holder}, which no audited, gate-checked canary start "
                "placed (the alias was set outside adapter-registry): it is not served"
            )
        if self.holder is None:
            return (
                f"{self.model}: canary event {self.start.seq} runs version {self.start.version}, but no version "
                "holds the canary alias (being set, or deleted outside adapter-registry)"
            )
        if self.files_changed:
            return (
                f"{self.model}@canary: the registered files of version {self.holder} changed since its canary "
                f"started (event {self.start.seq})"
            )
        return (
            f"{self.model}@canary is held by version {self.holder}, but the running canary (event "
            f"{self.start.seq}) is version {self.start.version}: the alias was moved outside adapter-registry"
        )


def check_canary(
    model: str, holder: int | None, events: Sequence[StageChange], digest: str = ""
) -> CanaryCheck:
    """The canary alias holder (and its files' current ``files_digest``) checked against the trail."""
    start = open_canary(events)
    changed = bool(start and digest and start.digest and start.version == holder and start.digest != digest)
    return CanaryCheck(model, holder, start, changed)
