"""Canary on live quality with real SmolLM2 adapters: a deliberately worse candidate (trained on shuffled
categories) is rolled back automatically, a good one (the same recipe, another seed) promoted, and how many
requests each decision took.

    .venv/bin/python benchmarks/canary_bench.py --threads 1 \\
        --production-adapter data/06_models/acme_support_lora/adapter --data data/05_model_input/acme_support

Production is acme_support_lora as `make run` trained it (`--production-adapter`). The candidates are trained here
by the pipeline's own training (`training.adapter.train_adapter`, pipelines/acme_support_lora.yaml): "worse" with
every category of the training and validation splits replaced by the next one in alphabetical order (replies
kept: a labelling bug), `--bad-steps` steps; "good" with the recipe as it is and seed 1, `--good-steps` steps.
All three are registered in a sqlite registry without offline metrics (the benchmark does not re-evaluate them:
the gates left are "the production base" and "production only from staging"), production promoted, then each
candidate is put in staging and started as a canary by the CLI: `promote acme_support_lora/V --to production
--canary 50` under the policy below, and decided by `adapter-registry canary watch acme_support_lora --interval 2`,
both subprocesses, against a real `adapter-registry serve` subprocess (polling 1 s, heartbeat 1 s).

Load: 4 client threads send the acme test split's rows, over and over, as `tenant` acme with the row's request as
`input` (rendered by each version's serving contract; constrained decoding; 8 new tokens: the category), each with
its own `user` key, and after each answer `POST /v1/feedback` with the row's true category as `label`, until the
watch exits. The decision's figures are the ones its audit event records.

Writes benchmarks/results/canary_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from adapter_registry.environment import offline_defaults

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
NAME = "acme_support_lora"
SEPARATOR = " | "
POLICY = """# the benchmark's canary policy (see conf/base/canary_policy.yml for the keys)
default:
  metric: feedback_accuracy
  min_requests: 30
  max_requests: 2000
  allowed_drop: 0.05
  confidence: 0.95
  max_error_increase: 0.02
"""


def shuffled(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each record's category replaced by the next one in alphabetical order (a derangement), reply kept."""
    categories = sorted({r["completion"].split(SEPARATOR, 1)[0] for r in records})
    following = {c: categories[(i + 1) % len(categories)] for i, c in enumerate(categories)}
    out = []
    for record in records:
        category, _, reply = record["completion"].partition(SEPARATOR)
        out.append({**record, "completion": f"{following[category]}{SEPARATOR}{reply}"})
    return out


def train(data: Path, folder: Path, steps: int, seed: int, shuffle: bool) -> float:
    """Train acme's recipe (``steps``, ``seed``; ``shuffle``: categories permuted) into ``folder``; seconds."""
    from adapter_registry.bases.resolve import resolve_base
    from adapter_registry.data.formats import read_records, to_sft_examples
    from adapter_registry.recipes.load import load_recipe
    from adapter_registry.training.adapter import train_adapter
    from adapter_registry.training.models import save_adapter

    started = time.perf_counter()
    recipe = load_recipe(ROOT / "pipelines" / f"{NAME}.yaml")
    training = recipe.training.model_copy(update={"max_steps": steps, "seed": seed})
    recipe = recipe.model_copy(update={"training": training})
    base = resolve_base(recipe.base)
    splits = {}
    for split in ("train", "validation"):
        records = read_records(data / f"{split}.jsonl")
        splits[split] = to_sft_examples(
            shuffled(records) if shuffle else records,
            "completion",
            prompt_template=recipe.task.prompt_template,
        )
    trained = train_adapter(recipe, base, splits["train"], splits["validation"])
    save_adapter(trained.model, folder, trained.contract)
    return time.perf_counter() - started


def register(tracking_uri: str, folders: list[Path]) -> None:
    from adapter_registry.bases.resolve import resolve_reference
    from adapter_registry.registry import promotion
    from adapter_registry.registry.entities import Tag
    from adapter_registry.registry.policy import Actor, PromotionPolicy
    from adapter_registry.registry.store import AdapterStore

    store = AdapterStore(tracking_uri)
    tags = {Tag.BASE_FINGERPRINT: resolve_reference("smollm2-135m-instruct").fingerprint, Tag.TASK: "causal_lm_sft",
            Tag.METHOD: "lora", Tag.MUST_BEAT_BASE: "false"}  # fmt: skip
    for folder in folders:
        store.register_adapter(NAME, folder, tags=tags, metrics={})
    who = {"policy": PromotionPolicy(enforce="never"), "actor": Actor("benchmark", False)}
    promotion.promote(store, f"{NAME}/1", "staging", **who)
    promotion.promote(store, f"{NAME}/1", "production", **who)


def cli(*args: str, tracking_uri: str, workdir: Path, env: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "adapter_registry", "--tracking-uri", tracking_uri, *args]


def start_server(
    tracking_uri: str, workdir: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (workdir / "tenants.yml").write_text(f"tenants:\n  acme: {NAME}\n")
    command = [sys.executable, "-m", "adapter_registry", "--tracking-uri", tracking_uri, "serve", "--base",
               "smollm2-135m-instruct", "--port", str(port), "--tenants", str(workdir / "tenants.yml"),
               "--request-log", "", "--poll-seconds", "1", "--heartbeat-seconds", "1"]  # fmt: skip
    log = workdir / "serve.log"
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while True:
        if process.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            raise RuntimeError("serve did not start in 600 s")
        time.sleep(0.5)


def phase(
    version: int, url: str, tracking_uri: str, workdir: Path, env: dict[str, str], rows: list[dict[str, str]],
    clients: int,
) -> dict[str, Any]:  # fmt: skip
    """Canary ``version`` at 50%, load with feedback until the watch decides; what it decided, on what figures."""
    from adapter_registry.registry import promotion
    from adapter_registry.registry.policy import Actor, PromotionPolicy
    from adapter_registry.registry.store import AdapterStore

    promotion.promote(AdapterStore(tracking_uri), f"{NAME}/{version}", "staging",
                      policy=PromotionPolicy(enforce="never"), actor=Actor("benchmark", False))  # fmt: skip
    base = [sys.executable, "-m", "adapter_registry", "--tracking-uri", tracking_uri]
    start = subprocess.run([*base, "promote", f"{NAME}/{version}", "--to", "production", "--canary", "50",
                            "--canary-policy", str(workdir / "canary.yml"), "--wait", "--timeout", "120", "--json"],
                           cwd=workdir, env=env, capture_output=True, text=True)  # fmt: skip
    if start.returncode != 0:
        raise RuntimeError(f"canary start failed: {start.stderr[-2000:]}")
    started = time.time()
    watch = subprocess.Popen([*base, "canary", "watch", NAME, "--interval", "2", "--json"], cwd=workdir, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    sent = {
        "requests": 0,
        "candidate": 0,
        "production": 0,
        "failed": 0,
        "correct": {"candidate": 0, "production": 0},
    }
    lock = threading.Lock()

    def client(worker: int) -> None:
        http = httpx.Client(timeout=120)
        i = worker
        while watch.poll() is None:
            row = rows[i % len(rows)]
            i += clients
            answer = http.post(f"{url}/v1/generate", json={"tenant": "acme", "input": row["prompt"],
                                                           "max_new_tokens": 8, "user": f"v{version}-{i}"})  # fmt: skip
            with lock:
                sent["requests"] += 1
            if answer.status_code != 200:
                with lock:
                    sent["failed"] += 1
                continue
            body = answer.json()
            label = row["completion"].split(SEPARATOR, 1)[0]
            side = body.get("canary", "production")
            verdict = http.post(f"{url}/v1/feedback", json={"request_id": body["request_id"], "label": label})
            with lock:
                sent[side] += 1
                sent["correct"][side] += int(verdict.status_code == 200 and verdict.json()["correct"])

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    out, err = watch.communicate()
    seconds = time.time() - started
    data = json.loads(out)
    closing = data["events"][-1] if data["events"] else {}
    details = closing.get("details", {})
    return {
        "candidate": version, "watch_exit": watch.returncode, "decision": closing.get("action"),
        "seconds": round(seconds, 1), "sent": sent, "verdict": details.get("verdict"),
        "figures": details.get("figures"), "promotion_event": details.get("promotion"),
        "watch_stderr_tail": err[-600:],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--production-adapter", type=Path, required=True, help="acme's adapter folder (make run)"
    )
    parser.add_argument("--data", type=Path, default=ROOT / "data/05_model_input/acme_support")
    parser.add_argument("--bad-steps", type=int, default=40)
    parser.add_argument("--good-steps", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads here and in the server (0: default)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    args = parser.parse_args()
    offline_defaults()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "threads": args.threads or "torch default", "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "policy": POLICY,
        "bad_steps": args.bad_steps, "good_steps": args.good_steps, "clients": args.clients,
    }  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="canary-bench-"))
    production = args.production_adapter.resolve()
    data = args.data.resolve()
    os.chdir(workdir)
    (workdir / "canary.yml").write_text(POLICY)
    result["training_seconds"] = {
        "worse (shuffled categories)": round(train(data, workdir / "worse", args.bad_steps, 0, True), 1),
        "good (seed 1)": round(train(data, workdir / "good", args.good_steps, 1, False), 1),
    }
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    register(tracking_uri, [production, workdir / "worse", workdir / "good"])
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines() if line.strip()]
    process, url = start_server(tracking_uri, workdir, env)
    try:
        result["worse"] = phase(2, url, tracking_uri, workdir, env, rows, args.clients)
        result["good"] = phase(3, url, tracking_uri, workdir, env, rows, args.clients)
    finally:
        process.terminate()
        process.wait(timeout=30)
    from adapter_registry.registry.audit import AuditLog
    from adapter_registry.registry.store import AdapterStore

    trail = AuditLog(AdapterStore(tracking_uri)).read(NAME)
    result["audit"] = [
        f"#{e.seq} {e.action} v{e.version} {e.from_stage} → {e.to_stage} by {e.who}" for e in trail.events
    ]
    result["audit_intact"] = trail.intact
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "canary_bench.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "canary_bench.md").write_text(to_markdown(result))


def to_markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Canary on live quality: acme_support_lora on SmolLM2-135M-Instruct, a worse and a good candidate at 50%",
        "",
        f"{r['machine']}, torch threads {r['threads']}, load average {r['load_average_at_start']} at start and "
        f"{r['load_average_at_end']} at the end (the cores are shared with other work). Production: acme's adapter "
        f"from `make run`; candidates trained here: worse = categories shifted to the next one ({r['bad_steps']} "
        f"steps, {r['training_seconds']['worse (shuffled categories)']} s), good = the recipe with seed 1 "
        f"({r['good_steps']} steps, {r['training_seconds']['good (seed 1)']} s). {r['clients']} clients send the "
        "test split's requests with their true category as feedback until `canary watch` decides. Written by "
        f"`benchmarks/canary_bench.py` in {r['seconds']} s.", "",
        "Policy: feedback accuracy; at least 30 observations per version; allowed drop 0.05; one-sided 95% "
        "(Newcombe's interval on the difference, from Wilson intervals); errors: roll back when the rise is above "
        "0.02.", "",
        "| candidate | decision | watch exit | requests sent until it | answered by candidate / production (at the "
        "decision) | feedback accuracy candidate / production | difference, one-sided bounds | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for key in ("worse", "good"):
        p = r[key]
        figures, verdict = p["figures"] or {}, p["verdict"] or {}
        c, b = figures.get("candidate", {}), figures.get("production", {})
        fc, fb = c.get("feedback", [0, 0]), b.get("feedback", [0, 0])
        lines.append(
            f"| {key} (v{p['candidate']}) | {p['decision']} | {p['watch_exit']} | {p['sent']['requests']} | "
            f"{c.get('requests')} / {b.get('requests')} | {fc[0]}/{fc[1]} / {fb[0]}/{fb[1]} | "
            f"{verdict.get('difference')} [{verdict.get('lower')}, {verdict.get('upper')}] | {p['seconds']} |"
        )
    lines += [
        "",
        "Audit trail (intact: " + str(r["audit_intact"]).lower() + "):",
        "",
        "```",
        *r["audit"],
        "```",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
