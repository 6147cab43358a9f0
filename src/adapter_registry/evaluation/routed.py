"""A routed adapter evaluated honestly: the request router against each of its experts alone and a uniform mix.

Every system answers every test row of every expert's own test set (and so their union), each decoded through a
serving contract as ``serve`` would: an expert through its own; the router's choice (top-1, or its fallback below
the threshold) through the chosen expert's; the uniform mix (peft ``add_weighted_adapter``, ``linear`` with weight
1/n when the experts share a rank, else ``cat``, the exact sum of their updates) through the contract of the test
set's own expert. Scored by exact match on the answer's category (``evaluate.answer_key``), with bootstrap 95%
intervals. The router's own accuracy (its top-1 label against the expert whose test set a row comes from) and the
confusion between experts are reported beside.

The gate (issue 16): on each expert's own test set the routed score is no worse than the best single expert's,
within its interval (the routed interval's upper bound reaches the best single score), and on the union it is
better than every single expert (point estimates). ``routing_report`` returns it as plain values; nothing here
knows MLflow or Kedro.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adapter_registry.evaluation.evaluate import _mean, answer_key, generate
from adapter_registry.evaluation.metrics import bootstrap_interval

UNION = "union"
UNIFORM = "uniform_mix"
ROUTED = "routed"


@dataclass(frozen=True)
class TestRow:
    """One row of an expert's test set: the request as ``serve`` receives it (``input``) and the expected answer."""

    expert: str  # whose test set it comes from
    input: str | Mapping[str, Any]
    expected: str


def expected_answer(record: Mapping[str, Any]) -> str:
    """The answer of a test record: completion, alpaca's output, or chat's last assistant message."""
    if "completion" in record:
        return str(record["completion"])
    if "output" in record:
        return str(record["output"])
    turns = [
        m for m in record.get("messages") or () if isinstance(m, Mapping) and m.get("role") == "assistant"
    ]
    if turns:
        return str(turns[-1].get("content", ""))
    raise ValueError(
        f"a test record with no answer (completion, output or an assistant message): {sorted(record)}"
    )


def request_of(record: Mapping[str, Any]) -> str | Mapping[str, Any]:
    """What a client sends as ``input`` for a test record: its fields without the answer."""
    if "messages" in record:
        messages = list(record["messages"])
        while messages and isinstance(messages[-1], Mapping) and messages[-1].get("role") == "assistant":
            messages.pop()
        return {"messages": messages}
    return {k: v for k, v in record.items() if k not in ("completion", "output")}


def _scores(hits: np.ndarray, samples: int) -> dict[str, float]:
    low, high = bootstrap_interval(_mean, hits, hits.astype(float), samples)
    return {
        "exact_match": float(hits.mean()) if len(hits) else 0.0,
        "ci_low": low,
        "ci_high": high,
        "n": len(hits),
    }


def routing_report(
    base_path: Path | str,
    experts: Mapping[str, Path],
    rows: Sequence[TestRow],
    decisions: Sequence[tuple[str, str, float]],
    samples: int = 1000,
    max_length: int = 2048,
) -> dict[str, Any]:
    """Score routed / each expert / uniform mix on each expert's test set and the union.

    ``experts``: name -> adapter folder (with its ``serving.json``); ``decisions``: per row, (the adapter the router
    sends it to, the router's top-1 label, its confidence)."""
    import torch
    from peft import PeftModel

    from adapter_registry.contract import contract_of
    from adapter_registry.decoding import AnswerConstraint
    from adapter_registry.training.models import load_base_model, load_tokenizer

    names = list(experts)
    contracts = {n: contract_of(folder) for n, folder in experts.items()}
    tokenizer = load_tokenizer(base_path)
    model: Any = PeftModel.from_pretrained(
        load_base_model(base_path, "causal_lm_sft"), str(experts[names[0]]), adapter_name=names[0]
    )
    for name in names[1:]:
        model.load_adapter(str(experts[name]), adapter_name=name)
    ranks = {int(model.peft_config[n].r) for n in names}
    mix = "linear" if len(ranks) == 1 else "cat"
    model.add_weighted_adapter(names, [1.0 / len(names)] * len(names), UNIFORM, combination_type=mix)
    model.eval()

    def answers(adapter: str, contract_owner: str, inputs: list[Any]) -> list[str]:
        contract = contracts[contract_owner]
        prompts = [contract.render(x, tokenizer) for x in inputs]
        constraint, budget = None, contract.max_new_tokens
        if contract.decoding == "constrained" and contract.answers:
            constraint = AnswerConstraint.build(contract.answers, tokenizer, contract.answer_separator)
            budget = max(budget, constraint.longest)
        model.set_adapter(adapter)
        with torch.no_grad():
            return generate(model, tokenizer, prompts, budget, max_length, constraint=constraint)

    def run(plan: Sequence[tuple[str, str]]) -> list[str]:
        """Every row's answer, ``plan[i]`` = (adapter, whose contract), batched by that pair."""
        out = [""] * len(rows)
        groups: dict[tuple[str, str], list[int]] = {}
        for i in range(len(rows)):
            groups.setdefault(plan[i], []).append(i)
        for (adapter, owner), idx in groups.items():
            for i, text in zip(idx, answers(adapter, owner, [rows[i].input for i in idx]), strict=True):
                out[i] = text
        return out

    systems: dict[str, list[str]] = {n: run([(n, n)] * len(rows)) for n in names}
    systems[UNIFORM] = run([(UNIFORM, r.expert) for r in rows])
    systems[ROUTED] = run([(d[0], d[0]) for d in decisions])

    def hits(outputs: list[str], idx: list[int]) -> np.ndarray:
        return np.array([
            answer_key(outputs[i], contracts[rows[i].expert].answer_separator)
            == answer_key(rows[i].expected, contracts[rows[i].expert].answer_separator)
            for i in idx
        ])  # fmt: skip

    sets = {n: [i for i, r in enumerate(rows) if r.expert == n] for n in names}
    sets[UNION] = list(range(len(rows)))
    table = {
        system: {s: _scores(hits(out, idx), samples) for s, idx in sets.items()}
        for system, out in systems.items()
    }

    gate: dict[str, Any] = {}
    for s in sets:
        best = max(names, key=lambda n: table[n][s]["exact_match"])
        routed = table[ROUTED][s]
        ok = routed["ci_high"] >= table[best][s]["exact_match"] if s != UNION else all(
            routed["exact_match"] > table[n][UNION]["exact_match"] for n in names
        )  # fmt: skip
        gate[s] = {"best_single": best, "best_single_score": table[best][s]["exact_match"],
                   "routed": routed["exact_match"], "passed": bool(ok)}  # fmt: skip
    truth = [r.expert for r in rows]
    top = [d[1] for d in decisions]
    confusion = {t: dict(Counter(p for p, tt in zip(top, truth, strict=True) if tt == t)) for t in names}
    router_hits = np.array([p == t for p, t in zip(top, truth, strict=True)])
    return {
        "systems": table,
        "uniform_mix": mix,
        "router": {
            **_scores(router_hits, samples),
            "accuracy": float(router_hits.mean()) if len(rows) else 0.0,
            "confusion": confusion,  # true expert -> router's top-1 label -> rows
            "abstained": int(sum(1 for d in decisions if d[0] != d[1])),
            "mean_confidence": float(np.mean([d[2] for d in decisions])) if decisions else 0.0,
        },
        "gate": {
            "passed": all(g["passed"] for g in gate.values()),
            "sets": gate,
            "rule": "on each expert's test set: routed interval reaches the best single expert's score; "
            "on the union: routed above every single expert",
        },
        "rows": [
            {
                "expert": r.expert,
                "input": r.input,
                "routed_to": decisions[i][0],
                "confidence": round(decisions[i][2], 4),
                "expected": r.expected,
                **{s: systems[s][i] for s in systems},
            }
            for i, r in enumerate(rows)
        ],
    }


def flat_routing_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The report's figures as registered metrics: ``routing.<system>.<set>.exact_match`` (+ interval),
    ``routing.router_accuracy`` and ``routing.gate_passed``."""
    flat: dict[str, float] = {}
    for system, sets in report["systems"].items():
        for s, v in sets.items():
            for key in ("exact_match", "ci_low", "ci_high"):
                flat[f"routing.{system}.{s}.{key}"] = float(v[key])
    flat["routing.router_accuracy"] = float(report["router"]["accuracy"])
    flat["routing.gate_passed"] = 1.0 if report["gate"]["passed"] else 0.0
    return flat
