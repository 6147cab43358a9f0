"""Cold start and capacity: 50 LoRA adapters registered on SmolLM2, at most K = 8 resident in `serve`.

    .venv/bin/python benchmarks/coldstart_bench.py --threads 1     # ~10 minutes on a shared 2-core machine
    .venv/bin/python benchmarks/coldstart_bench.py --adapters 12 --requests 24 --no-write   # a quick look

Adapters: LoRA r=16 on all linear layers, random A and B (as benchmarks/serving_bench.py makes them, ~19 MB each)
with a serving contract, registered in a sqlite MLflow registry and put in production by audited promotions. The
server is the real one (`build_server`, uvicorn on 127.0.0.1, in this process) with `--max-resident 8`; it pulls
every version into its local cache at start-up. Measured over HTTP (`POST /v1/generate`, `max_new_tokens` 1: the
answer is the first token):

- cold start: requests going round all adapters, so each one's adapter was evicted since its last request: the
  request loads it from the cache (sha256 check, read, install in place of the least recently used) and answers;
- warm: requests going round the resident adapters;
- warm switch: the pool switching between resident adapters (``AdapterPool.activate``), and the bookkeeping a
  request for a resident adapter adds (``Residency.try_acquire`` + ``release``);
- memory: pool parameter bytes and process RSS with K resident, then with all of them resident.

Writes benchmarks/results/coldstart_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from adapter_registry.environment import offline_defaults

RESULTS = Path(__file__).parent / "results"
GOALS = {"cold_p50_ms_max": 300.0, "warm_switch_p50_ms_max": 1.0}
TEMPLATE = "### Request:\n{prompt}\n### Answer:\n"
INPUTS = ["Where is my parcel?", "Cancel my order please.", "Change my delivery address.", "Refund status?"]


class LoadTimes(logging.Handler):
    """Collects the residency's "loaded NAME (cold) in N ms" lines: the server-side load time of each cold start."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.ms: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.match(r"loaded \S+ \(cold\) in (\d+) ms", record.getMessage())
        if found:
            self.ms.append(float(found.group(1)))


def stats(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
        "max_ms": round(ordered[-1], 3),
        "n": len(ordered),
    }


def register_all(folders: list[Path], fingerprint: str, workdir: Path) -> str:
    from adapter_registry.registry import promotion
    from adapter_registry.registry.entities import Tag
    from adapter_registry.registry.policy import Actor, PromotionPolicy
    from adapter_registry.registry.store import AdapterStore

    store = AdapterStore(f"sqlite:///{workdir / 'mlflow.db'}")
    tags = {Tag.BASE_FINGERPRINT: fingerprint, Tag.TASK: "causal_lm_sft", Tag.METHOD: "lora"}
    for folder in folders:
        version = store.register_adapter(folder.name, folder, tags=tags, metrics={})
        promotion.promote(
            store, version.ref, "production", force=True, reason="benchmark: random adapters record no metrics",
            policy=PromotionPolicy(enforce="never"), actor=Actor("benchmark", False),
        )  # fmt: skip
    return store.tracking_uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=50)
    parser.add_argument("--resident", type=int, default=8, help="--max-resident K")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--requests", type=int, default=100, help="cold requests (and as many warm ones)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    args = parser.parse_args()
    offline_defaults()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    if args.threads:
        torch.set_num_threads(args.threads)
    import httpx

    from adapter_registry.bases.resolve import resolve_reference
    from adapter_registry.contract import ServingContract
    from adapter_registry.serving.app import ServeOptions, build_server
    from serving_bench import make_adapters, rss_bytes

    started = time.perf_counter()
    base = resolve_reference("smollm2-135m-instruct")
    result: dict[str, Any] = {
        "base": base.identity, "adapters": args.adapters, "max_resident": args.resident, "rank": args.rank,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="coldstart-bench-"))
    cwd = Path.cwd()
    try:
        os.chdir(workdir)  # run artifacts land in workdir/mlruns
        t0 = time.perf_counter()
        folders = make_adapters(base.path, workdir / "adapters", args.adapters, args.rank)
        contract = ServingContract(task="causal_lm_sft", format="completion", prompt_template=TEMPLATE)
        for folder in folders:
            contract.write(folder)
        result["adapter_file_mib"] = round(
            (folders[0] / "adapter_model.safetensors").stat().st_size / 2**20, 2
        )
        result["make_adapters_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        tracking_uri = register_all(folders, base.fingerprint, workdir)
        result["register_and_promote_s"] = round(time.perf_counter() - t0, 1)
        names = [f.name for f in folders]

        loads = LoadTimes()
        logging.getLogger("adapter_registry.serving").addHandler(loads)
        logging.getLogger("adapter_registry.serving").setLevel(logging.INFO)
        (workdir / "tenants.yml").write_text("tenants: {}\n")
        port = _free_port()
        options = ServeOptions(
            tracking_uri=tracking_uri, port=port, poll_seconds=600, tenants_file=workdir / "tenants.yml",
            request_log=None, max_resident=args.resident, request_timeout=120,
        )  # fmt: skip
        t0 = time.perf_counter()
        server = build_server("smollm2-135m-instruct", options)
        server.config.log_level = "warning"
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            assert thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        result["server_start_s"] = round(time.perf_counter() - t0, 1)  # base load + 50 pulls into the cache
        service = server.config.app.state.service
        url = f"http://127.0.0.1:{port}"
        client = httpx.Client(timeout=120)

        def ask(name: str, i: int) -> float:
            body = {"adapter": name, "input": INPUTS[i % len(INPUTS)], "max_new_tokens": 1}
            t = time.perf_counter()
            answer = client.post(f"{url}/v1/generate", json=body)
            elapsed = (time.perf_counter() - t) * 1000
            assert answer.status_code == 200 and answer.headers["x-adapter-name"] == name, answer.text
            return elapsed

        health = client.get(f"{url}/health").json()
        assert (health["adapters"], health["resident"]) == (args.adapters, args.resident), health
        resident = service.residency.resident()
        for i, name in enumerate(resident * 2):  # warm-up: the first requests of a process are slower
            ask(name, i)
        loads.ms.clear()

        # cold: round all adapters in least-recently-used order: each request's adapter was evicted since
        cold_order = [n for n in names if n not in resident] + resident
        cold = [ask(cold_order[i % len(cold_order)], i) for i in range(args.requests)]
        result["cold_loads_counted"] = len(loads.ms)
        assert len(loads.ms) == args.requests, f"{len(loads.ms)} cold loads for {args.requests} requests"
        resident = service.residency.resident()
        warm = [ask(resident[i % len(resident)], i) for i in range(args.requests)]
        assert len(loads.ms) == args.requests, "a warm request loaded an adapter"

        result["cold_request"] = stats(cold)
        result["cold_load_server_side"] = stats(loads.ms)
        result["warm_request"] = stats(warm)
        result["cold_penalty_p50_ms"] = round(
            result["cold_request"]["p50_ms"] - result["warm_request"]["p50_ms"], 1
        )
        result["warm_switch"] = warm_switch(service, resident)

        memory = service.pool.memory()
        result["memory"] = {"resident_k": {
            "adapters": len(service.pool), "adapter_mib": round(memory["adapters_total_bytes"] / 2**20, 1),
            "pool_total_mib": round(memory["total_bytes"] / 2**20, 1), "rss_mib": round(rss_bytes() / 2**20, 1),
        }}  # fmt: skip
        service.residency.max_resident = None  # now every adapter resident, for the comparison
        for name in names:
            service.residency.acquire(name)
            service.residency.release(name)
        memory = service.pool.memory()
        result["memory"]["resident_all"] = {
            "adapters": len(service.pool), "adapter_mib": round(memory["adapters_total_bytes"] / 2**20, 1),
            "pool_total_mib": round(memory["total_bytes"] / 2**20, 1), "rss_mib": round(rss_bytes() / 2**20, 1),
        }  # fmt: skip
        client.close()
        server.should_exit = True
        thread.join(timeout=30)
    finally:
        os.chdir(cwd)
        shutil.rmtree(workdir, ignore_errors=True)
    result["goals"] = {
        "cold_p50": result["cold_request"]["p50_ms"] <= GOALS["cold_p50_ms_max"],
        "warm_switch_p50": result["warm_switch"]["activate"]["p50_ms"] <= GOALS["warm_switch_p50_ms_max"],
    }
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = round(time.perf_counter() - started, 1)
    markdown = to_markdown(result)
    print(json.dumps(result, indent=2))
    print(markdown)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "coldstart_bench.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "coldstart_bench.md").write_text(markdown)
        print(f"wrote {RESULTS / 'coldstart_bench.json'} and .md", file=sys.stderr)


def warm_switch(service: Any, resident: list[str]) -> dict[str, Any]:
    """Switching between resident adapters: the pool's route switch, and a request's residency bookkeeping."""
    switch, hold = [], []
    for i in range(2000):
        name = resident[i % len(resident)]
        t = time.perf_counter()
        service.pool.activate(name)
        switch.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        assert service.residency.try_acquire(name)
        service.residency.release(name)
        hold.append((time.perf_counter() - t) * 1000)
    service.pool.activate(None)
    return {"activate": stats(switch), "residency_hold_release": stats(hold)}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def to_markdown(r: dict[str, Any]) -> str:
    c, s, w, ws, m = (
        r["cold_request"],
        r["cold_load_server_side"],
        r["warm_request"],
        r["warm_switch"],
        r["memory"],
    )
    ok = {True: "yes", False: "**no**"}
    k, n = m["resident_k"], m["resident_all"]
    return f"""# Cold start and capacity: {r["adapters"]} LoRA adapters (r={r["rank"]}, all-linear) on {r["base"]}, {r["max_resident"]} resident

{r["machine"]}, {r["torch_threads"]} torch thread(s), load average {r["load_average_at_start"]} at start and
{r["load_average_at_end"]} at the end (the cores are shared with other work). Adapter file {r["adapter_file_mib"]} MiB.
The real server (`serve --max-resident {r["max_resident"]}`, uvicorn on 127.0.0.1 in the benchmark's process), the
adapters registered in a sqlite MLflow registry and promoted (audited); each request `POST /v1/generate` with an
`input` rendered by the adapter's serving contract and `max_new_tokens` 1 (request → answer = first token).
Server start-up (base load, {r["adapters"]} versions pulled into the local cache and checked): {r["server_start_s"]} s.
Written by `benchmarks/coldstart_bench.py` in {r["wall_s"]} s.

| what | p50 | p99 | max | n | goal | met |
|---|---|---|---|---|---|---|
| cold start: request → first token, adapter not resident (ms) | {c["p50_ms"]} | {c["p99_ms"]} | {c["max_ms"]} | {c["n"]} | p50 ≤ 300 | {ok[r["goals"]["cold_p50"]]} |
| of which the load, server side: sha256 check + read + install (ms) | {s["p50_ms"]} | {s["p99_ms"]} | {s["max_ms"]} | {s["n"]} | | |
| warm: request → first token, adapter resident (ms) | {w["p50_ms"]} | {w["p99_ms"]} | {w["max_ms"]} | {w["n"]} | | |
| warm switch between resident adapters, `AdapterPool.activate` (ms) | {ws["activate"]["p50_ms"]} | {ws["activate"]["p99_ms"]} | {ws["activate"]["max_ms"]} | {ws["activate"]["n"]} | p50 ≤ 1 | {ok[r["goals"]["warm_switch_p50"]]} |
| a request's residency bookkeeping, hold + release (ms) | {ws["residency_hold_release"]["p50_ms"]} | {ws["residency_hold_release"]["p99_ms"]} | {ws["residency_hold_release"]["max_ms"]} | {ws["residency_hold_release"]["n"]} | | |

Cold penalty (cold p50 − warm p50): {r["cold_penalty_p50_ms"]} ms. Every cold request loaded its adapter
({r["cold_loads_counted"]} cold loads counted), no warm one did.

| memory | adapters resident | adapter parameters (MiB) | pool total (MiB) | process RSS (MiB) |
|---|---|---|---|---|
| K = {r["max_resident"]} resident | {k["adapters"]} | {k["adapter_mib"]} | {k["pool_total_mib"]} | {k["rss_mib"]} |
| all resident | {n["adapters"]} | {n["adapter_mib"]} | {n["pool_total_mib"]} | {n["rss_mib"]} |
"""


if __name__ == "__main__":
    main()
