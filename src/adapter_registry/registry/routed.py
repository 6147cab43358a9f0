"""What promotion and ``compat`` check of a routed adapter (``ar.route.*`` tags, ``routing.route_facts``).

A request router sends traffic to its pinned experts, so promoting it into a stage needs each of them (and its
fallback) to hold that stage *as pinned*: the attested holder is the version the router was built and evaluated
with (:func:`routing_gates`, beside the usual gates; ``--force`` with a reason overrides, audited). Its routed
evaluation gate (``routing.gate_passed``) is a gate too. ``compat`` of a router checks every expert against the
base (the base a server of its experts holds), of an Arrow mixture every expert folder inside it
(:func:`routed_compat`): the report is the worst of theirs, each check named by its expert.
"""

from __future__ import annotations

from pathlib import Path

from adapter_registry.registry.audit import AuditLog
from adapter_registry.registry.compat import COMPATIBLE, EXIT_CODES, Check, CompatReport, check_compat
from adapter_registry.registry.entities import AdapterVersion, GateResult
from adapter_registry.registry.store import AdapterStore
from adapter_registry.routing import ARROW, ROUTER, route_facts

ROUTING_GATE_METRIC = "routing.gate_passed"


def routing_gates(store: AdapterStore, version: AdapterVersion, to: str) -> list[GateResult]:
    """A router's extra gates for stage ``to``: each pinned expert holds ``to`` (attested) at its pinned version,
    and the routed evaluation passed. [] for any other adapter."""
    facts = route_facts(version.tags)
    if facts is None or facts.kind != ROUTER:
        return []
    audit = AuditLog(store)
    results = []
    for expert in facts.pinned:
        check = audit.stage_checks(expert.name)[to]
        holds = check.ok and check.attested == expert.version
        if holds:
            detail = f"{expert.ref} holds {to}"
        elif check.attested is None:
            detail = f"no attested version of {expert.name} holds {to}: promote {expert.ref} to {to} first"
        else:
            detail = (
                f"{to} holds {expert.name}/{check.attested}, the router pinned {expert.ref}: promote {expert.ref} "
                f"to {to}, or train a router on {expert.name}/{check.attested}"
            )
        results.append(GateResult(f"expert {expert.name} holds {to}", holds, detail))
    value = version.metrics.get(ROUTING_GATE_METRIC)
    results.append(
        GateResult(
            "routed no worse than each expert, better on the union",
            value == 1.0,
            "routing evaluation not recorded"
            if value is None
            else f"{ROUTING_GATE_METRIC} = {value:g} (routing.json)",
        )
    )
    return results


def routed_compat(
    store: AdapterStore, version: AdapterVersion, adapter_dir: Path, base_ref: str, scratch: Path
) -> CompatReport:
    """``check_compat`` for any adapter; for a router every pinned expert (pulled into ``scratch``) and for an
    Arrow mixture every expert folder, against ``base_ref``: the worst outcome, each check named by its expert."""
    from adapter_registry.adapter_folder import arrow_experts

    facts = route_facts(version.tags)
    if facts is None:
        return check_compat(version, adapter_dir, base_ref)
    if facts.kind == ARROW:
        folders = [(e, path) for e, (_, path) in zip(facts.experts, arrow_experts(adapter_dir), strict=True)]
    else:
        folders = [(e, scratch / e.name) for e in facts.pinned]
    reports = []
    for expert, folder in folders:
        registered = store.get_version(expert.name, expert.version)
        if facts.kind == ROUTER:
            store.pull(expert.ref, folder)
        reports.append((expert.ref, check_compat(registered, folder, base_ref)))
    checks = tuple(
        Check(f"expert {ref}: {c.name}", c.passed, c.detail) for ref, r in reports for c in r.checks
    )
    worst = max((r.outcome for _, r in reports), key=EXIT_CODES.__getitem__, default=COMPATIBLE)
    return CompatReport(version=version.ref, base=base_ref, outcome=worst, checks=checks)
