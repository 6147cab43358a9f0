"""The operator's side of a rollout: a canary started under its policy, the fleet's live figures gathered, the
policy's verdict written through the registry; and the fleet's confirmation that it serves a version.

**Who decides a canary: the ``adapter-registry canary watch`` process**, not the servers. Each replica keeps the
figures of the requests it answered and hands them out (``GET /v1/canary``); the watcher finds the live replicas in
the fleet (``registry.fleet``), sums their figures, evaluates the policy the canary started with (recorded in its
audited start, so the decision does not depend on the file at the time of the decision) and promotes or rolls back
through the registry (``registry.canary``) under its operator's identity. Why there: one decider per canary
(replicas deciding on their own would each see a share of the traffic, and race to write the audit trail), the
replicas keep read-only access to the registered models, and whoever runs the watch answers for its promotion
under the promotion policy like for any promotion. While no watch runs nothing is decided: the canary keeps its
share of the traffic (``canary status`` shows the verdict the figures would give).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adapter_registry.canary import ArmFigures, CanaryPolicy, Verdict, decide, load_canary_policy
from adapter_registry.registry.canary import Canary, canary_state, end_canary, start_canary
from adapter_registry.registry.entities import RegistryError, StageChange
from adapter_registry.registry.fleet import read_fleet
from adapter_registry.registry.policy import Actor, PromotionPolicy
from adapter_registry.registry.stages import CanaryCheck
from adapter_registry.registry.store import AdapterStore

__all__ = ["CanaryLook", "act", "begin_canary", "look_at_canary", "watch_canary"]


def begin_canary(
    store: AdapterStore,
    ref: str,
    percent: int,
    *,
    shadow: bool = False,
    policy_file: Path | None = None,
    reason: str = "",
    force: bool = False,
    policy: PromotionPolicy | None = None,
    actor: Actor | None = None,
) -> StageChange:
    """Start a canary of ``ref`` under the canary policy of its adapter (``policy_file``, default
    conf/base/canary_policy.yml), recorded in its audited start."""
    from adapter_registry.canary import CanaryPolicyError
    from adapter_registry.registry.store import parse_ref

    name = parse_ref(ref)[0]
    try:
        canary_policy = load_canary_policy(name, policy_file)
    except CanaryPolicyError as exc:
        raise RegistryError("INVALID_INPUT", str(exc)) from None
    if canary_policy.metric == "agreement" and not shadow:
        raise RegistryError(
            "INVALID_INPUT", f"the canary policy of {name} decides on agreement, which only a shadowed canary "
            "measures: add --shadow, or choose another metric in the policy",
        )  # fmt: skip
    return start_canary(
        store, ref, percent, canary_policy=canary_policy.model_dump(), shadow=shadow, reason=reason, force=force,
        policy=policy, actor=actor,
    )  # fmt: skip


@dataclass
class CanaryLook:
    """One look at a canary: its record, the fleet's figures summed, the policy's verdict."""

    name: str
    canary: Canary | None
    check: CanaryCheck
    candidate: ArmFigures | None = None
    baseline: ArmFigures | None = None
    verdict: Verdict | None = None
    replicas: list[dict[str, Any]] = field(default_factory=list)  # replica, url, answered or why not

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapter": self.name, "canary": self.canary.to_dict() if self.canary else None,
            "alias": {"holder": self.check.holder, "ok": self.check.ok, "problem": self.check.problem},
            "figures": {"candidate": self.candidate.to_dict() if self.candidate else None,
                        "production": self.baseline.to_dict() if self.baseline else None},
            "verdict": self.verdict.to_dict() if self.verdict else None, "replicas": self.replicas,
        }  # fmt: skip


def _figures(url: str, name: str, seq: int, timeout: float) -> dict[str, Any] | None:
    """The replica's figures of canary ``seq`` of ``name`` (None when it serves no such canary)."""
    import httpx

    response = httpx.get(f"{url.rstrip('/')}/v1/canary", timeout=timeout)
    response.raise_for_status()
    found = response.json().get("canaries", {}).get(name)
    return found if found is not None and found.get("canary") == seq else None


def look_at_canary(store: AdapterStore, name: str, timeout: float = 5.0) -> CanaryLook:
    """The canary of ``name`` now: its record and alias check, every live production replica's figures summed,
    and the verdict of its policy."""
    canary, check = canary_state(store, name)
    look = CanaryLook(name, canary, check)
    if canary is None:
        return look
    version = store.get_version(name, canary.version)
    candidate, baseline = ArmFigures(canary.version), ArmFigures(canary.baseline)
    baselines: Counter[int] = Counter()
    for replica in read_fleet(store):
        if replica.condition() != "live" or replica.stage != "production":
            continue
        if replica.base_fingerprint != version.base_fingerprint:
            continue
        row: dict[str, Any] = {"replica": replica.replica, "url": replica.url}
        try:
            figures = _figures(replica.url, name, canary.seq, timeout)
        except Exception as exc:  # one replica out of reach: decide on the others, say so
            row["error"] = f"{type(exc).__name__}: {exc}"
            look.replicas.append(row)
            continue
        row["serves_canary"] = figures is not None
        look.replicas.append(row)
        if figures is None:
            continue
        versions = figures.get("versions", {})
        candidate += ArmFigures.from_dict(versions.get(str(canary.version), {"version": canary.version}))
        served_baseline = int(figures.get("baseline", canary.baseline))
        baselines[served_baseline] += 1
        baseline += ArmFigures.from_dict(versions.get(str(served_baseline), {"version": served_baseline}))
    if baselines:
        baseline.version = baselines.most_common(1)[0][0]
    look.candidate, look.baseline = candidate, baseline
    look.verdict = decide(CanaryPolicy.model_validate(canary.policy), candidate, baseline)
    return look


def act(
    store: AdapterStore, look: CanaryLook, policy: PromotionPolicy | None = None, actor: Actor | None = None
) -> list[StageChange]:
    """Write the verdict of ``look`` through the registry (nothing for ``continue``): promote the candidate (an
    audited promotion, then the canary's close) or roll it back, the figures in the closing event."""
    if look.canary is None or look.verdict is None or look.verdict.decision == "continue":
        return []
    assert look.candidate is not None and look.baseline is not None
    details = {
        "verdict": look.verdict.to_dict(),
        "figures": {"candidate": look.candidate.summary(), "production": look.baseline.summary()},
        "replicas": [r["replica"] for r in look.replicas if r.get("serves_canary")],
    }
    outcome: Literal["promote", "rollback"] = "promote" if look.verdict.decision == "promote" else "rollback"
    return end_canary(
        store, look.name, outcome, reason=look.verdict.reason, details=details, seq=look.canary.seq, policy=policy,
        actor=actor,
    )  # fmt: skip


def watch_canary(
    store: AdapterStore,
    name: str,
    *,
    interval: float = 5.0,
    timeout: float | None = None,
    policy: PromotionPolicy | None = None,
    actor: Actor | None = None,
    on_look: Callable[[CanaryLook], None] | None = None,
) -> tuple[CanaryLook, list[StageChange]]:
    """Look at the canary every ``interval`` seconds until its policy decides (then act) or ``timeout`` passes;
    the last look and the events written (none: it is still running, or no canary ran)."""
    started = time.monotonic()
    while True:
        look = look_at_canary(store, name)
        if on_look is not None:
            on_look(look)
        if look.canary is None:
            return look, []
        events = act(store, look, policy, actor)
        if events:
            return look, events
        if timeout is not None and time.monotonic() - started >= timeout:
            return look, []
        time.sleep(interval)
