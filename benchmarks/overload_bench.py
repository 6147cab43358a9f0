"""Overload: 2,000 requests with up to 200 in flight against one `adapter-registry serve`, then SIGTERM under load.

    .venv/bin/python benchmarks/overload_bench.py                   # SmolLM2 and 4 LoRA adapters (~3 minutes)
    .venv/bin/python benchmarks/overload_bench.py --base tiny       # a tiny random Llama (seconds of work)

The server is a real `adapter-registry serve` subprocess on 127.0.0.1 (`--max-queue 64 --request-timeout 60`,
its defaults), the adapters registered in a sqlite MLflow registry and promoted (audited): LoRA r=16 all-linear
with random weights and a serving contract (SmolLM2), or tiny ones on a tiny random Llama. Clients: 200 workers
sending the 2,000 requests (`POST /v1/generate`, four adapters in turn, `max_new_tokens` 16), each answered once
(no retries), with a 120 s client timeout, as in issue 17's reproduction (aiohttp); a probe in a process of its
own asks `/health` every 0.2 s throughout. Then 200 more requests are started and the server is sent SIGTERM while they are in flight: how long
it takes to exit, and what those requests were answered.

Writes benchmarks/results/overload_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from adapter_registry.environment import offline_defaults

RESULTS = Path(__file__).parent / "results"
TEMPLATE = "### Request:\n{prompt}\n### Answer:\n"
INPUTS = ["Where is my parcel?", "Cancel my order please.", "Change my delivery address.", "Refund status?"]
TINY_INPUTS = ["a b c 1 2", "d e f 3", "x y z", "q r 7 8"]


def stats(samples_s: list[float]) -> dict[str, float]:
    if not samples_s:
        return {"n": 0}
    ms = sorted(s * 1000 for s in samples_s)
    return {
        "p50_ms": round(statistics.median(ms), 1), "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1),
        "max_ms": round(ms[-1], 1), "n": len(ms),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ set-up
def smollm2_adapters(workdir: Path, count: int) -> tuple[str, list[Path]]:
    from adapter_registry.bases.resolve import resolve_reference
    from adapter_registry.contract import ServingContract
    from serving_bench import make_adapters

    base = resolve_reference("smollm2-135m-instruct")
    folders = make_adapters(base.path, workdir / "adapters", count, 16)
    for folder in folders:
        ServingContract(task="causal_lm_sft", format="completion", prompt_template=TEMPLATE).write(folder)
    return "smollm2-135m-instruct", folders


def tiny_adapters(workdir: Path, count: int) -> tuple[str, list[Path]]:
    """A tiny random Llama with a word-level tokenizer (as the serving tests build it) and random LoRA adapters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from adapter_registry.contract import ServingContract

    torch.manual_seed(0)
    base = workdir / "tiny-llama"
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(base)
    words = ["<pad>", "<s>", "</s>", "<unk>", *"abcdefghijklmnopqrstuvwxyz", *(str(i) for i in range(98))]
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(base)  # fmt: skip
    folders = []
    for i in range(count):
        model = get_peft_model(
            LlamaForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules="all-linear")
        )
        torch.manual_seed(i + 1)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.normal_(0, 0.5)
        folder = workdir / "adapters" / f"tenant_{i:02d}"
        model.save_pretrained(folder)
        ServingContract(task="causal_lm_sft", format="completion", prompt_template="{prompt}").write(folder)
        folders.append(folder)
    return str(base), folders


def register_all(folders: list[Path], base: str, workdir: Path) -> str:
    from adapter_registry.bases.resolve import resolve_reference
    from adapter_registry.registry import promotion
    from adapter_registry.registry.entities import Tag
    from adapter_registry.registry.policy import Actor, PromotionPolicy
    from adapter_registry.registry.store import AdapterStore

    store = AdapterStore(f"sqlite:///{workdir / 'mlflow.db'}")
    tags = {Tag.BASE_FINGERPRINT: resolve_reference(base).fingerprint, Tag.TASK: "causal_lm_sft"}
    for folder in folders:
        version = store.register_adapter(folder.name, folder, tags=tags, metrics={})
        promotion.promote(
            store, version.ref, "production", force=True, reason="benchmark: random adapters record no metrics",
            policy=PromotionPolicy(enforce="never"), actor=Actor("benchmark", False),
        )  # fmt: skip
    return store.tracking_uri


def start_server(base: str, tracking_uri: str, workdir: Path, args: argparse.Namespace) -> tuple[Any, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (workdir / "tenants.yml").write_text("tenants: {}\n")
    command = [
        sys.executable, "-m", "adapter_registry", "serve", "--base", base, "--port", str(port),
        "--tenants", str(workdir / "tenants.yml"), "--request-log", "", "--poll-seconds", "600",
        "--max-queue", str(args.max_queue), "--request-timeout", str(args.request_timeout),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    log = (workdir / "serve.log").open("w")
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        if process.poll() is not None:
            raise RuntimeError((workdir / "serve.log").read_text()[-3000:])
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            raise RuntimeError("serve did not start in 300 s")
        time.sleep(0.3)


# ------------------------------------------------------------------------------------------------ load
async def load(url: str, names: list[str], inputs: list[str], total: int, in_flight: int) -> dict[str, Any]:
    """``total`` requests from ``in_flight`` workers (aiohttp: httpx's pool costs more CPU than the server at
    200 connections), each answered once."""
    import aiohttp

    outcomes: list[tuple[int | str, float]] = []
    counter = iter(range(total))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in counter:
            body = {"adapter": names[i % len(names)], "input": inputs[i % len(inputs)], "max_new_tokens": 16}
            started = time.perf_counter()
            try:
                async with session.post(f"{url}/v1/generate", json=body) as answer:
                    await answer.read()
                    status: int | str = answer.status
            except TimeoutError:
                status = "client timeout"
            except aiohttp.ClientError as exc:
                status = type(exc).__name__
            outcomes.append((status, time.perf_counter() - started))

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=in_flight + 10)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:
        await asyncio.gather(*(worker(session) for _ in range(in_flight)))
    wall = time.perf_counter() - started
    by_status: dict[str, int] = {}
    for status, _ in outcomes:
        by_status[str(status)] = by_status.get(str(status), 0) + 1
    return {
        "requests": total, "in_flight": in_flight, "wall_s": round(wall, 1), "by_status": by_status,
        "answered_200_per_s": round(by_status.get("200", 0) / wall, 2),
        "latency_200": stats([s for st, s in outcomes if st == 200]),
        "latency_429": stats([s for st, s in outcomes if st == 429]),
        "latency_other": stats([s for st, s in outcomes if st not in (200, 429)]),
    }  # fmt: skip


def probe(url: str, out: Path, stop: Path) -> None:
    """``--probe``: GET /health every 0.2 s until ``stop`` exists (a process of its own, so that the clients'
    load does not delay it); writes the latencies and the queue figures seen to ``out``."""
    latencies: list[float] = []
    errors: list[str] = []
    queues: list[dict[str, Any]] = []
    with httpx.Client(timeout=10) as client:
        while not stop.exists():
            started = time.perf_counter()
            try:
                answer = client.get(f"{url}/health")
                latencies.append(time.perf_counter() - started)
                queues.append(answer.json()["queue"])
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
            time.sleep(0.2)
    out.write_text(json.dumps({"latencies": latencies, "errors": errors, "queues": queues}))


class Prober:
    """The /health probe in its own process, for the duration of a ``with`` block."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.out, self.stop = workdir / "probe.json", workdir / "probe.stop"
        self.stop.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--probe",
                url,
                "--probe-out",
                str(self.out),
                "--probe-stop",
                str(self.stop),
            ]
        )
        self.figures: dict[str, Any] = {}

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.touch()
        self.process.wait(timeout=60)
        seen = json.loads(self.out.read_text())
        probes = seen["latencies"]
        self.figures = {
            **stats(probes), "over_1s": sum(p > 1 for p in probes), "errors": len(seen["errors"]),
            "max_queue_depth_seen": max((q["depth"] for q in seen["queues"]), default=0),
            "max_in_flight_seen": max((q["in_flight"] for q in seen["queues"]), default=0),
        }  # fmt: skip


async def shutdown_under_load(
    process: Any, url: str, names: list[str], inputs: list[str], in_flight: int, after_s: float
) -> dict[str, Any]:
    """``in_flight`` workers send requests without pause; SIGTERM after ``after_s``: how long the server takes to
    exit, and what the requests sent before the signal were answered (after it, connections are refused)."""
    import aiohttp

    before: list[str] = []
    signalled = asyncio.Event()

    async def worker(session: aiohttp.ClientSession, w: int) -> None:
        i = w
        while not signalled.is_set():
            body = {"adapter": names[i % len(names)], "input": inputs[i % len(inputs)], "max_new_tokens": 16}
            i += in_flight
            try:
                async with session.post(f"{url}/v1/generate", json=body) as answer:
                    await answer.read()
                    status = str(answer.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
                if signalled.is_set() and isinstance(exc, aiohttp.ClientConnectorError):
                    return  # sent after the signal: the listening socket is closed
            before.append(status)

    connector = aiohttp.TCPConnector(limit=in_flight + 10)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:
        workers = [asyncio.create_task(worker(session, w)) for w in range(in_flight)]
        await asyncio.sleep(after_s)
        async with session.get(f"{url}/health") as answer:
            queue = (await answer.json())["queue"]
        sent = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        signalled.set()
        while process.poll() is None:
            await asyncio.sleep(0.02)
        exited = time.perf_counter() - sent
        await asyncio.gather(*workers)
    by_status: dict[str, int] = {}
    for status in before:
        by_status[status] = by_status.get(status, 0) + 1
    return {"in_flight": in_flight, "queue_at_sigterm": queue, "exit_s": round(exited, 2),
            "exit_code": process.returncode, "by_status": by_status}  # fmt: skip


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--request-timeout", type=float, default=60)
    parser.add_argument(
        "--threads", type=int, default=0, help="the server's OMP_NUM_THREADS (0: torch's default)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: run as the /health prober of URL
    parser.add_argument("--probe-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--probe-stop", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args.probe, args.probe_out, args.probe_stop)
        return
    offline_defaults()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    import psutil

    started = time.perf_counter()
    result: dict[str, Any] = {
        "base": args.base, "adapters": args.adapters, "max_queue": args.max_queue,
        "request_timeout_s": args.request_timeout, "server_threads": args.threads or "torch default",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="overload-bench-"))
    cwd = Path.cwd()
    process = None
    try:
        os.chdir(workdir)
        make = smollm2_adapters if args.base == "smollm2" else tiny_adapters
        base, folders = make(workdir, args.adapters)
        tracking_uri = register_all(folders, base, workdir)
        process, url = start_server(base, tracking_uri, workdir, args)
        names = [f.name for f in folders]
        inputs = INPUTS if args.base == "smollm2" else TINY_INPUTS
        rss_start = psutil.Process(process.pid).memory_info().rss
        with Prober(url, workdir) as prober:
            result["load"] = asyncio.run(load(url, names, inputs, args.requests, args.in_flight))
        result["load"]["health"] = prober.figures
        result["server_rss_mib"] = {"start": round(rss_start / 2**20, 1),
                                    "after_load": round(psutil.Process(process.pid).memory_info().rss / 2**20, 1)}  # fmt: skip
        result["shutdown"] = asyncio.run(
            shutdown_under_load(process, url, names, inputs, args.in_flight, 2.0)
        )
        result["server_log_tail"] = (workdir / "serve.log").read_text().splitlines()[-6:]
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        os.chdir(cwd)
        shutil.rmtree(workdir, ignore_errors=True)
    load_ = result["load"]
    result["checks"] = {
        "every_request_answered": sum(
            v for k, v in load_["by_status"].items() if k in ("200", "429", "503", "504")
        )
        == args.requests,
        "no_client_timeouts": "client timeout" not in load_["by_status"],
        "health_within_1s": load_["health"]["over_1s"] == 0 and load_["health"]["errors"] == 0,
        "sigterm_exit_within_5s": result["shutdown"]["exit_s"] <= 5,
        "shutdown_requests_answered": set(result["shutdown"]["by_status"]) <= {"200", "429", "503"},
    }
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = round(time.perf_counter() - started, 1)
    markdown = to_markdown(result)
    print(json.dumps(result, indent=2))
    print(markdown)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "overload_bench.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "overload_bench.md").write_text(markdown)
        print(f"wrote {RESULTS / 'overload_bench.json'} and .md", file=sys.stderr)


def to_markdown(r: dict[str, Any]) -> str:
    load_, down, checks = r["load"], r["shutdown"], r["checks"]
    ok = {True: "yes", False: "**no**"}
    a, q, h = load_["latency_200"], load_["latency_429"], load_["health"]
    base = "SmolLM2-135M-Instruct" if r["base"] == "smollm2" else "a tiny random Llama"
    return f"""# Overload: {load_["requests"]} requests, {load_["in_flight"]} in flight, one `serve` on {base}

{r["machine"]}, server threads: {r["server_threads"]}, load average {r["load_average_at_start"]} at start and
{r["load_average_at_end"]} at the end (shared cores: the server, the 200 clients and other work compete).
`adapter-registry serve --max-queue {r["max_queue"]} --request-timeout {r["request_timeout_s"]:g}` as a subprocess,
{r["adapters"]} LoRA adapters (r=16 all-linear for SmolLM2, random weights, a serving contract); each request
`POST /v1/generate` with an `input` and `max_new_tokens` 16, answered once (no retries), client timeout 120 s;
`/health` probed every 0.2 s from a process of its own. Issue 17's reproduction before this change: 1,816 ok, 184 client timeouts at 120 s,
p50 37.9 s, p99 102.8 s, 3.5 requests/s; SIGTERM took 2.5 minutes on a busy machine.
Written by `benchmarks/overload_bench.py` in {r["wall_s"]} s.

| what | figure |
|---|---|
| answers by status | {", ".join(f"{k}: {v}" for k, v in sorted(load_["by_status"].items()))} |
| wall time / answered 200 per s | {load_["wall_s"]} s / {load_["answered_200_per_s"]} |
| accepted (200) latency p50 / p99 / max | {a.get("p50_ms")} / {a.get("p99_ms")} / {a.get("max_ms")} ms |
| refused (429, Retry-After) latency p50 / p99 / max | {q.get("p50_ms")} / {q.get("p99_ms")} / {q.get("max_ms")} ms |
| /health probes (own process): n, p50 / p99 / max, over 1 s, errors | {h.get("n")}, {h.get("p50_ms")} / {h.get("p99_ms")} / {h.get("max_ms")} ms, {h["over_1s"]}, {h["errors"]} |
| most requests seen waiting / in flight in the server | {h["max_queue_depth_seen"]} / {h["max_in_flight_seen"]} |
| server RSS start / after the load | {r["server_rss_mib"]["start"]} / {r["server_rss_mib"]["after_load"]} MiB |
| SIGTERM with {down["in_flight"]} clients sending (server queue {down["queue_at_sigterm"]}): exit after | {down["exit_s"]} s (exit code {down["exit_code"]}) |
| the requests sent before SIGTERM were answered | {", ".join(f"{k}: {v}" for k, v in sorted(down["by_status"].items()))} |

An accepted request waits behind at most `--max-queue` others, so its latency is bounded by about
max-queue ÷ throughput ({r["max_queue"]} ÷ {load_["answered_200_per_s"]}/s here, plus its own batch) and by
`--request-timeout` (504 beyond, its work dropped); a smaller `--max-queue` trades more 429s for lower latency.
The server's RSS grows once, at its first mixed batch (the gathered per-row LoRA stacks and the allocator's cache),
and stays flat after.

| check | met |
|---|---|
| every request answered (200, or 429/503/504 at once) | {ok[checks["every_request_answered"]]} |
| no client timeouts | {ok[checks["no_client_timeouts"]]} |
| /health answered within 1 s throughout | {ok[checks["health_within_1s"]]} |
| SIGTERM: exit within 5 s | {ok[checks["sigterm_exit_within_5s"]]} |
| SIGTERM: the in-flight requests answered (200, 429 or 503), none cut off | {ok[checks["shutdown_requests_answered"]]} |
"""


if __name__ == "__main__":
    main()
