"""Routing among adapters, measured (issue 16): each expert alone, a uniform mix, an Arrow mixture and the request
router, on each expert's test set and their union, with latency per request.

    .venv/bin/python benchmarks/routing_bench.py --base smollm2 --steps 40 --test-rows 60 --threads 1
    .venv/bin/python benchmarks/routing_bench.py --base tiny          # the same code on the tests' tiny models

Everything goes through the product: a Kedro project in a temporary folder whose recipes are the two support
tenants (``acme_support_lora`` as shipped, ``globex_support_qlora`` as a plain LoRA on the full-precision base so
that Arrow and the uniform mix can hold both) with ``--steps`` training steps, then a router (``routes_to:``, the
shipped intent router's MiniLM recipe with its rows derived from the experts' registered splits) and an Arrow
composition (``compose: combination_type: arrow``), all run by ``kedro run`` into a sqlite registry. The router's
own evaluation (``routing.json``: routed vs each expert vs uniform mix, router accuracy and confusion) gives most of
the table; the Arrow mixture is scored here on the same rows, through each test set's expert contract. Latency:
single sequential requests to ``serve``'s app in this process (an expert named directly, and routed), and batch-1
generation with plain peft (one expert, and the Arrow mixture, which the pool does not serve).

Writes ``benchmarks/results/routing_bench.md`` (``--base tiny``: ``routing_bench_tiny.md``) and its ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXPERTS = ("acme_lora", "globex_lora")
ROUTER, ARROW = "support_router", "support_arrow"
PROMPTS = {
    "acme_lora": "Hi, my order #19503 went to my old address",
    "globex_lora": "Hi, downloads crawl since Tuesday and the router blinks red",
}


# ------------------------------------------------------------------------------------------------ recipes
def _shipped(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "pipelines" / f"{name}.yaml").read_text()))


def real_recipes(data_root: Path, steps: int, test_rows: int, router_epochs: int) -> list[dict[str, Any]]:
    """The shipped recipes, cut to ``steps`` training steps and ``test_rows`` test rows; globex as plain LoRA."""
    experts = []
    for name, shipped, folder in (
        ("acme_lora", "acme_support_lora", "acme_support"),
        ("globex_lora", "globex_support_qlora", "globex_support"),
    ):
        r = _shipped(shipped)
        r["name"] = name
        r["method"] = {**_shipped("acme_support_lora")["method"]}  # LoRA r=16 on the full-precision base
        r["data"] = {
            **r["data"],
            **{s: str(data_root / folder / f"{s}.jsonl") for s in ("train", "validation", "test")},
        }
        r["training"] = {**r["training"], "max_steps": steps, "eval_every": max(steps // 2, 1),
                         "checkpoint_every": max(steps // 2, 1)}  # fmt: skip
        r["evaluation"] = {**r["evaluation"], "max_test_rows": test_rows, "decoding": "constrained"}
        r["merge"] = {"enabled": False}
        experts.append(r)
    router = _shipped("intent_router")
    router.update(name=ROUTER, description="routes support requests to their tenant's adapter")
    del router["data"]
    router["routes_to"] = {"experts": [f"{e}/1" for e in EXPERTS]}
    router["training"] = {
        **router["training"],
        "epochs": router_epochs,
        "eval_every": 20,
        "checkpoint_every": 20,
    }
    router["evaluation"] = {"metrics": ["accuracy", "macro_f1", "loss"], "max_test_rows": test_rows}
    router["merge"] = {"enabled": False}
    arrow = {k: v for k, v in experts[0].items() if k not in ("method", "training")}
    arrow.update(name=ARROW, description="Arrow mixture of the two support tenants")
    arrow["compose"] = {"parents": [{"version": f"{e}/1"} for e in EXPERTS], "combination_type": "arrow",
                        "top_k": 2, "max_length": experts[0]["training"]["max_length"]}  # fmt: skip
    arrow[
        "evaluation"
    ] = {  # composed: greedy in its own evaluation (the table decodes through each expert's contract)
        k: v for k, v in {**arrow["evaluation"], "must_beat_base": False}.items() if k != "decoding"
    }
    return [*experts, router, arrow]


def tiny_recipes(work: Path) -> list[dict[str, Any]]:
    """The tests' tiny random Llama and BERT: support requests vs weather requests (tests/routing)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import (
        _drop_overlap,
        build_tiny_bert,
        build_tiny_llama,
        classifier_recipe,
        sft_recipe,
        support_rows,
        write_jsonl,
    )
    from routing.conftest import weather_rows

    llama, bert = build_tiny_llama(work / "tiny-llama"), build_tiny_bert(work / "tiny-bert")
    experts = []
    for name, rows, seed in (("acme_lora", support_rows, 1), ("globex_lora", weather_rows, 2)):
        data = work / f"{name}-data"
        for split, n, s in (("train", 48, seed), ("validation", 12, seed + 10), ("test", 24, seed + 20)):
            write_jsonl(data / f"{split}.jsonl", rows(n, s))
        _drop_overlap(data, "prompt")
        r = sft_recipe(llama, data, name=name)
        r["training"] = {**r["training"], "max_steps": 12, "learning_rate": 2e-2}
        r["merge"] = {"enabled": False}
        r["evaluation"]["must_beat_base"] = False
        experts.append(r)
    PROMPTS.update(globex_lora="will it rain in oslo on friday", acme_lora="please refund order 123")
    router = classifier_recipe(bert, work, name=ROUTER)
    del router["data"]
    router.update(routes_to={"experts": [f"{e}/1" for e in EXPERTS]}, merge={"enabled": False})
    router["task"] = {"type": "sequence_classification", "neighbours": False}
    router["training"] = {**router["training"], "epochs": 3}
    router["evaluation"]["must_beat_base"] = False
    arrow = {k: v for k, v in experts[0].items() if k not in ("method", "training")}
    arrow["name"] = ARROW
    arrow["compose"] = {"parents": [{"version": f"{e}/1"} for e in EXPERTS], "combination_type": "arrow",
                        "top_k": 2, "max_length": 64}  # fmt: skip
    return [*experts, router, arrow]


# ------------------------------------------------------------------------------------------------ running
def kedro_run(project: Path, db: Path, namespaces: list[str], threads: int) -> float:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "KEDRO_DISABLE_TELEMETRY": "true",
           "ADAPTER_REGISTRY_THREADS": str(threads), "COLUMNS": "200"}  # fmt: skip
    kedro = Path(sys.executable).with_name("kedro")
    started = time.perf_counter()
    done = subprocess.run([str(kedro), "run", "--namespaces", ",".join(namespaces)], cwd=project, env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"kedro run {namespaces} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return time.perf_counter() - started


def make_project(folder: Path, recipes: list[dict[str, Any]]) -> Path:
    (folder / "src").mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(
        '[tool.kedro]\npackage_name = "adapter_registry"\nproject_name = "routing_bench"\n'
        'kedro_init_version = "1.7.0"\nsource_dir = "src"\n'
    )
    shutil.copytree(
        ROOT / "conf", folder / "conf", dirs_exist_ok=True, ignore=shutil.ignore_patterns("local")
    )
    (folder / "conf" / "local").mkdir(exist_ok=True)
    (folder / "pipelines").mkdir(exist_ok=True)
    for r in recipes:
        (folder / "pipelines" / f"{r['name']}.yaml").write_text(yaml.safe_dump(r, sort_keys=False))
    return folder


def arrow_scores(store: Any, work: Path, samples: int) -> tuple[dict[str, dict[str, float]], Any, Any]:
    """The registered Arrow mixture on each expert's routed test rows (routing.json's), through that expert's
    contract; returns the scores and the loaded model and tokenizer."""
    import numpy as np
    import torch

    from adapter_registry.bases.resolve import resolve_reference
    from adapter_registry.contract import contract_of
    from adapter_registry.decoding import AnswerConstraint
    from adapter_registry.evaluation.evaluate import _mean, answer_key, generate
    from adapter_registry.evaluation.metrics import bootstrap_interval
    from adapter_registry.training.models import load_adapter, load_tokenizer

    folder = work / "pulled" / ARROW
    store.pull(f"{ARROW}/1", folder)
    config = json.loads((folder / "experts" / "task_0" / "adapter_config.json").read_text())
    base = resolve_reference(config["base_model_name_or_path"])
    model, tokenizer = load_adapter(base.path, folder, "causal_lm_sft"), load_tokenizer(base.path)
    rows = json.loads((work / "project/data/08_reporting" / ROUTER / "routing.json").read_text())["rows"]
    hits: dict[str, list[bool]] = {}
    for expert in EXPERTS:
        store.pull(f"{expert}/1", work / "pulled" / expert)
        contract = contract_of(work / "pulled" / expert)
        mine = [r for r in rows if r["expert"] == expert]
        prompts = [contract.render(r["input"], tokenizer) for r in mine]
        constraint, budget = None, contract.max_new_tokens
        if contract.decoding == "constrained" and contract.answers:
            constraint = AnswerConstraint.build(contract.answers, tokenizer, contract.answer_separator)
            budget = max(budget, constraint.longest)
        with torch.no_grad():
            out = generate(
                model, tokenizer, prompts, budget, contract.max_prompt_tokens or 2048, constraint=constraint
            )
        sep = contract.answer_separator
        hits[expert] = [
            answer_key(o, sep) == answer_key(r["expected"], sep) for o, r in zip(out, mine, strict=True)
        ]
    hits["union"] = [h for e in EXPERTS for h in hits[e]]
    scores = {}
    for s, h in hits.items():
        a = np.array(h)
        low, high = bootstrap_interval(_mean, a, a.astype(float), samples)
        scores[s] = {"exact_match": float(a.mean()), "ci_low": low, "ci_high": high, "n": len(a)}
    return scores, model, tokenizer


def latencies(
    store: Any, base_path: Path, fingerprint: str, requests: int, arrow: Any, tokenizer: Any, work: Path
) -> dict[str, float]:
    """Median ms per single request: serve's app (expert named, routed) and plain peft batch-1 (expert, Arrow)."""
    import torch
    from fastapi.testclient import TestClient

    from adapter_registry.contract import contract_of
    from adapter_registry.evaluation.evaluate import generate
    from adapter_registry.registry import promotion
    from adapter_registry.registry.policy import Actor, PromotionPolicy
    from adapter_registry.serving.app import create_app
    from adapter_registry.serving.pool import AdapterPool
    from adapter_registry.serving.sync import RegistrySource
    from adapter_registry.training.models import load_adapter

    for name in (*EXPERTS, ROUTER):
        promotion.promote(store, f"{name}/1", "production", force=True, reason="routing benchmark",
                          policy=PromotionPolicy(enforce="never"), actor=Actor("bench", False))  # fmt: skip
    timings: dict[str, list[float]] = {"serve: expert named": [], "serve: routed": []}
    pool = AdapterPool.from_pretrained(base_path, fingerprint=fingerprint)
    with TestClient(create_app(pool, RegistrySource(store), poll_seconds=3600, request_log=None)) as client:
        for i in range(requests + 1):
            expert = EXPERTS[i % len(EXPERTS)]
            for mode, body in (
                ("serve: expert named", {"adapter": expert}),
                ("serve: routed", {"route": ROUTER}),
            ):
                started = time.perf_counter()
                answer = client.post("/v1/generate", json={**body, "input": PROMPTS[expert]})
                assert answer.status_code == 200, answer.text
                if i:  # the first of each is a warm-up
                    timings[mode].append((time.perf_counter() - started) * 1000)
    contract = contract_of(work / "pulled" / EXPERTS[0])
    prompt = contract.render(PROMPTS[EXPERTS[0]], tokenizer)
    one = load_adapter(base_path, work / "pulled" / EXPERTS[0], "causal_lm_sft")
    for mode, model in (("peft batch 1: one expert", one), ("peft batch 1: Arrow mixture", arrow)):
        timings[mode] = []
        for i in range(requests + 1):
            started = time.perf_counter()
            with torch.no_grad():
                generate(model, tokenizer, [prompt], contract.max_new_tokens, 2048)
            if i:
                timings[mode].append((time.perf_counter() - started) * 1000)
    return {mode: round(statistics.median(t), 1) for mode, t in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--steps", type=int, default=100, help="training steps per expert (the shipped 100)")
    parser.add_argument("--test-rows", type=int, default=150, help="test rows per expert")
    parser.add_argument("--router-epochs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10, help="requests per latency figure")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", type=Path, default=None, help="the demo data (data/05_model_input)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()

    from adapter_registry.environment import offline_defaults

    offline_defaults()
    import torch

    torch.set_num_threads(args.threads)
    from adapter_registry.registry.store import AdapterStore

    work = args.keep or Path(tempfile.mkdtemp(prefix="routing-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.base == "tiny":
        recipes = tiny_recipes(work)
        args.steps, args.router_epochs = 12, 3  # what tiny_recipes sets
    else:
        data_root = args.data_root or next(
            p
            for p in (ROOT / "data/05_model_input", Path("/work/main/data/05_model_input"))
            if (p / "acme_support").is_dir()
        )
        recipes = real_recipes(data_root, args.steps, args.test_rows, args.router_epochs)
    project, db = make_project(work / "project", recipes), work / "mlflow.db"
    seconds = {"experts": kedro_run(project, db, list(EXPERTS), args.threads)}
    seconds["router"] = kedro_run(project, db, [ROUTER], args.threads)
    seconds["arrow"] = kedro_run(project, db, [ARROW], args.threads)
    store = AdapterStore(f"sqlite:///{db}")
    routing = json.loads((project / "data/08_reporting" / ROUTER / "routing.json").read_text())
    samples = 1000
    arrow, arrow_model, tokenizer = arrow_scores(store, work, samples)
    expert = store.get_version(EXPERTS[0], 1)
    from adapter_registry.bases.resolve import resolve_reference

    config = json.loads((work / "pulled" / EXPERTS[0] / "adapter_config.json").read_text())
    base = resolve_reference(config["base_model_name_or_path"])
    latency = latencies(
        store, base.path, expert.base_fingerprint, args.requests, arrow_model, tokenizer, work
    )
    table = {**routing["systems"], "arrow": arrow}
    result = {
        "base": args.base, "steps": args.steps, "test_rows": args.test_rows, "router_epochs": args.router_epochs,
        "threads": args.threads, "table": table, "router": routing["router"], "gate": routing["gate"],
        "uniform_mix": routing["uniform_mix"], "latency_ms": latency, "kedro_seconds": seconds,
        "expert_metrics": {e: store.get_version(e, 1).metrics.get("exact_match") for e in EXPERTS},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), torch threads {args.threads}",
    }  # fmt: skip
    suffix = "" if args.base == "smollm2" else "_tiny"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"routing_bench{suffix}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"routing_bench{suffix}.md").write_text(render(result, " ".join(sys.argv[1:])))
    print((RESULTS / f"routing_bench{suffix}.md").read_text())


def render(r: dict[str, Any], argv: str) -> str:
    sets = [*EXPERTS, "union"]
    names = {"acme_lora": "acme test", "globex_lora": "globex test", "union": "union"}
    systems = [(e, f"{e} alone") for e in EXPERTS] + [
        ("uniform_mix", f"uniform mix ({r['uniform_mix']}, 1/2 each)"), ("arrow", "Arrow (top_k 2)"),
        ("routed", "request router"),
    ]  # fmt: skip
    lines = [
        f"# Routing benchmark ({'SmolLM2-135M-Instruct experts, all-MiniLM-L6-v2 router' if r['base'] == 'smollm2' else 'tiny random models'})",
        "",
        f"`python benchmarks/routing_bench.py {argv}` on {r['machine']}. Experts trained {r['steps']} steps each "
        + (
            "(the shipped recipes' settings otherwise; globex as plain LoRA), at most "
            f"{r['test_rows']} test rows per expert; "
            if r["base"] == "smollm2"
            else "(support requests vs weather requests, the tests' data); "
        )
        + f"router {r['router_epochs']} epochs on rows derived from the experts' registered splits. Exact match on "
        "the answer's category, 95% bootstrap intervals. Every system answers through a serving contract as "
        "`serve` does (an expert and the router's choice through their own, the mix and Arrow through the test "
        "set's expert's). Latency is wall time per request, whatever its answer's length (greedy decoding stops at "
        "end-of-sequence).",
        "",
        "| system | " + " | ".join(names[s] for s in sets) + " |",
        "|---|" + "---|" * len(sets),
    ]
    for key, label in systems:
        cells = [
            f"{v['exact_match']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
            for v in (r["table"][key][s] for s in sets)
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    router = r["router"]
    lines += [
        "",
        f"Router accuracy (its top-1 label = the test set's expert): {router['accuracy']:.3f} "
        f"[{router['ci_low']:.3f}, {router['ci_high']:.3f}] over {router['n']} rows; mean confidence "
        f"{router['mean_confidence']:.3f}; confusion (true expert → routed to): "
        + "; ".join(f"{t} → {dict(sorted(c.items()))}" for t, c in router["confusion"].items()),
        "",
        "Gate (routed no worse than the best single expert on each expert's own test set, within its interval; "
        f"better than every expert on the union): **{'passed' if r['gate']['passed'] else 'failed'}** — "
        + "; ".join(
            f"{names[s]}: routed {g['routed']:.3f} vs best single {g['best_single']} {g['best_single_score']:.3f} "
            f"({'ok' if g['passed'] else 'fails'})"
            for s, g in r["gate"]["sets"].items()
        ),
        "",
        "| latency per request (median, ms) | |",
        "|---|---|",
        *[f"| {mode} | {ms} |" for mode, ms in r["latency_ms"].items()],
        "",
        "Kedro run seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in r["kedro_seconds"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
