"""Fleet-wide hot swap under load: three `adapter-registry serve` replicas follow the registry while the production
alias of one adapter moves twice through the CLI (`promote --wait`), under 2,000 requests, 16 concurrent, from
three tenants.

    .venv/bin/python benchmarks/fleet_bench.py --threads 1                 # webhooks from an `mlflow server`
    .venv/bin/python benchmarks/fleet_bench.py --threads 1 --no-webhooks   # a sqlite registry, replicas poll at 1 s

The base is a tiny random Llama and the adapters tiny random LoRAs (as the serving tests build them): what is
measured is the swap (registry → replica → every replica confirmed), not generation; three SmolLM2 replicas would
share the same 2 cores with the load generator. With webhooks, the registry is a real `mlflow server` (sqlite
backend) allowed to call 127.0.0.1, every replica registers its own signed webhook and polls every 10 s as a
safety net; without, each replica polls every second. Replicas announce themselves every 2 s and at once when
what they serve changes (`serving.fleet`).

Clients: 16 threads send 2,000 `POST /v1/generate` (`tenant` one of acme, globex, initech at random, 4 new
tokens), round-robin over the replicas, paced at 40 requests/s at most, each answered once (no retries). A watcher
asks each replica's `/v1/adapters` every 50 ms to time its swap. After 15% and after half of the requests,
`acme`'s adapter is promoted (v1 → v2 → v3) by `adapter-registry promote NAME/V --to production --wait --json` in a
subprocess (whose start-up takes seconds: the aliases move later in the load).

Checks: no failed request; every response names the version that held the alias when it started or when it ended,
or, while `promote --wait` had not yet confirmed the whole fleet, the previous one (a replica that had not swapped
yet), and none after the confirmation; per replica, no response of the old version started after one of the new
version ended (no flip back); every response's digest is its version's registered one.

Writes benchmarks/results/fleet_bench.{json,md} (fleet_bench_polling.* with --no-webhooks).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
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
TENANTS = {"acme": "acme_tiny", "globex": "globex_tiny", "initech": "initech_tiny"}
MOVED = "acme_tiny"
INPUTS = ["a b c 1 2", "d e f 3", "x y z", "q r 7 8"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(url: str, process: subprocess.Popen[bytes], log: Path, path: str = "/health") -> None:
    deadline = time.time() + 300
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            raise RuntimeError(f"{url} did not start in 300 s: {log.read_text()[-3000:]}")
        time.sleep(0.3)


def mlflow_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A real `mlflow server` (sqlite backend) allowed to call webhooks on 127.0.0.1."""
    port = free_port()
    env = {**os.environ, "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_WEBHOOK_CACHE_TTL": "1"}  # fmt: skip
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{workdir / 'server.db'}", "--artifacts-destination", str(workdir / "art"),
    ]  # fmt: skip
    log = workdir / "mlflow-server.log"
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_up(url, process, log)
    return process, url


def register(tracking_uri: str, base: str, folders: list[Path]) -> dict[str, dict[int, str]]:
    """v1 of each tenant's adapter in production (audited), acme's v2 and v3 registered; name -> version -> digest."""
    from adapter_registry.adapter_folder import weights_digest
    from adapter_registry.bases.resolve import resolve_reference
    from adapter_registry.registry import promotion
    from adapter_registry.registry.entities import Tag
    from adapter_registry.registry.policy import Actor, PromotionPolicy
    from adapter_registry.registry.store import AdapterStore

    store = AdapterStore(tracking_uri)
    # the random adapters record no offline metrics: no gate asks for one (the base and "from staging" still do)
    tags = {Tag.BASE_FINGERPRINT: resolve_reference(base).fingerprint, Tag.TASK: "causal_lm_sft",
            Tag.METHOD: "lora", Tag.MUST_BEAT_BASE: "false"}  # fmt: skip
    who = {"policy": PromotionPolicy(enforce="never"), "actor": Actor("benchmark", False)}
    digests: dict[str, dict[int, str]] = {}
    plan = [
        *((name, folders[i]) for i, name in enumerate(TENANTS.values())),
        (MOVED, folders[3]),
        (MOVED, folders[4]),
    ]
    for name, folder in plan:
        version = store.register_adapter(name, folder, tags=tags, metrics={})
        digests.setdefault(name, {})[version.version] = weights_digest(version.checksums)
        if version.version == 1:
            promotion.promote(store, version.ref, "staging", **who)
            promotion.promote(store, version.ref, "production", **who)
    return digests


def start_replicas(
    base: str, tracking_uri: str, workdir: Path, args: argparse.Namespace
) -> list[tuple[Any, str]]:
    (workdir / "tenants.yml").write_text("tenants:\n" + "".join(f"  {t}: {a}\n" for t, a in TENANTS.items()))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    replicas = []
    for i in range(args.replicas):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable, "-m", "adapter_registry", "serve", "--base", base, "--port", str(port),
            "--tenants", str(workdir / "tenants.yml"), "--request-log", "", "--heartbeat-seconds", "2",
            "--adapter-cache", str(workdir / f"cache-{i}"),
            "--poll-seconds", "10" if args.webhooks else "1",
            *(["--webhook-url", f"{url}/v1/registry/events"] if args.webhooks else []),
        ]  # fmt: skip
        log = workdir / f"serve-{i}.log"
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
        )
        replicas.append((process, url))
    for i, (process, url) in enumerate(replicas):
        wait_up(url, process, workdir / f"serve-{i}.log")
    return replicas


class Watcher(threading.Thread):
    """Asks every replica which version of the moved adapter it serves, every 50 ms: (time, replica, version)."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.changes: list[tuple[float, str, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        last: dict[str, int] = {}
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                for url in self.urls:
                    try:
                        listing = client.get(f"{url}/v1/adapters").json()["adapters"]
                    except (httpx.HTTPError, ValueError, KeyError):
                        continue
                    version = next((a["version"] for a in listing if a["name"] == MOVED), None)
                    if version is not None and last.get(url) != version:
                        last[url] = version
                        self.changes.append((time.time(), url, int(version)))
                time.sleep(0.05)


def load(urls: list[str], total: int, concurrency: int, rate: float, done: list[int]) -> list[dict[str, Any]]:
    """``total`` requests from ``concurrency`` threads, request i sent no sooner than i / ``rate`` seconds in (so
    that the load spans both alias moves, whose CLI processes take seconds to start)."""
    rng = random.Random(0)
    plan = [(i, urls[i % len(urls)], rng.choice(list(TENANTS))) for i in range(total)]
    local = threading.local()
    begin = time.time()

    def one(item: tuple[int, str, str]) -> dict[str, Any]:
        i, url, tenant = item
        client = getattr(local, "client", None) or httpx.Client(timeout=120)
        local.client = client
        time.sleep(max(0.0, begin + i / rate - time.time()))
        started = time.time()
        try:
            answer = client.post(f"{url}/v1/generate", json={"tenant": tenant, "prompt": INPUTS[i % len(INPUTS)],
                                                             "max_new_tokens": 4, "user": f"user-{i}"})  # fmt: skip
            body = (
                answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
            )
            row = {"status": answer.status_code, "adapter": body.get("adapter"), "version": body.get("version"),
                   "digest": body.get("digest")}  # fmt: skip
        except httpx.HTTPError as exc:
            row = {"status": 0, "error": f"{type(exc).__name__}: {exc}"}
        done[0] += 1
        return {"i": i, "replica": url, "tenant": tenant, "start": started, "end": time.time(), **row}

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, plan))


def promote(ref: str, tracking_uri: str, workdir: Path, timeout: float) -> dict[str, Any]:
    """``ref`` to staging in-process, then to production by the CLI with ``--wait``: what the CLI said, and when."""
    from adapter_registry.registry import promotion
    from adapter_registry.registry.policy import Actor, PromotionPolicy
    from adapter_registry.registry.store import AdapterStore

    promotion.promote(AdapterStore(tracking_uri), ref, "staging", policy=PromotionPolicy(enforce="never"),
                      actor=Actor("benchmark", False))  # fmt: skip
    command = [sys.executable, "-m", "adapter_registry", "--tracking-uri", tracking_uri, "promote", ref, "--to",
               "production", "--wait", "--timeout", str(timeout), "--json"]  # fmt: skip
    started = time.time()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    ended = time.time()
    if result.returncode != 0:
        raise RuntimeError(f"promote {ref} failed ({result.returncode}): {result.stderr[-2000:]}")
    out = json.loads(result.stdout)
    moved = dt.datetime.fromisoformat(out["event"]["when"]).timestamp()
    return {"ref": ref, "command_start": started, "command_end": ended, "moved": moved, "wait": out["fleet"]}


def check(
    rows: list[dict[str, Any]], moves: list[dict[str, Any]], digests: dict[str, dict[int, str]]
) -> dict[str, Any]:
    """The checks of the module's docstring."""

    def holder(t: float) -> int:
        return 1 + sum(1 for m in moves if t >= m["moved"])

    def window(t0: float, t1: float) -> bool:  # overlaps a move not yet confirmed on every replica
        return any(t0 <= m["command_end"] and t1 >= m["moved"] for m in moves)

    answered = [r for r in rows if r["status"] == 200]
    moved_rows = [r for r in answered if r["adapter"] == MOVED]
    strict = [r for r in moved_rows if r["version"] not in (holder(r["start"]), holder(r["end"]))]
    lagging = [r for r in strict if window(r["start"], r["end"]) and r["version"] == holder(r["start"]) - 1]
    after = [r for r in strict if r not in lagging]
    flips = 0
    for replica in {r["replica"] for r in moved_rows}:
        mine = sorted((r for r in moved_rows if r["replica"] == replica), key=lambda r: r["start"])
        for version in (2, 3):
            first_end = min((r["end"] for r in mine if r["version"] >= version), default=None)
            if first_end is not None:
                flips += sum(1 for r in mine if r["version"] < version and r["start"] > first_end)
    wrong_digest = [r for r in answered if digests.get(r["adapter"], {}).get(r["version"]) != r["digest"]]
    return {
        "requests": len(rows), "failed": len(rows) - len(answered),
        "errors": sorted({r.get("error") or str(r["status"]) for r in rows if r["status"] != 200}),
        "moved_adapter_requests": len(moved_rows),
        "in_propagation_windows": sum(1 for r in moved_rows if window(r["start"], r["end"])),
        "not_the_holder_at_start_or_end": len(strict),
        "of_which_previous_version_before_confirmation": len(lagging),
        "not_the_holder_outside_the_windows": len(after),
        "flip_backs": flips, "wrong_digest": len(wrong_digest),
        "versions_answered": {str(v): sum(1 for r in moved_rows if r["version"] == v) for v in (1, 2, 3)},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--rate", type=float, default=40.0, help="requests per second at most (the load's pace)"
    )
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--no-webhooks", dest="webhooks", action="store_false")
    parser.add_argument("--threads", type=int, default=0, help="each replica's OMP_NUM_THREADS (0: torch's)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    args = parser.parse_args()
    offline_defaults()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    from overload_bench import tiny_adapters

    started = time.perf_counter()
    result: dict[str, Any] = {
        "replicas": args.replicas, "requests": args.requests, "concurrency": args.concurrency, "rate": args.rate,
        "webhooks": args.webhooks, "replica_threads": args.threads or "torch default",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    os.chdir(workdir)
    processes: list[Any] = []
    try:
        base, folders = tiny_adapters(workdir, 5)
        if args.webhooks:
            server, tracking_uri = mlflow_server(workdir)
            processes.append(server)
        else:
            tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
        digests = register(tracking_uri, base, folders)
        replicas = start_replicas(base, tracking_uri, workdir, args)
        processes.extend(p for p, _ in replicas)
        urls = [u for _, u in replicas]
        from adapter_registry.registry.fleet import wait_for_fleet
        from adapter_registry.registry.store import AdapterStore

        store = AdapterStore(tracking_uri)
        assert wait_for_fleet(store, store.get_version(MOVED, 1), timeout=120).ok, "the fleet did not come up"
        watcher = Watcher(urls)
        watcher.start()
        done = [0]
        rows: list[dict[str, Any]] = []
        loader = threading.Thread(
            target=lambda: rows.extend(load(urls, args.requests, args.concurrency, args.rate, done))
        )
        load_started = time.time()
        loader.start()
        moves = []
        for version, share in (
            (2, 0.15),
            (3, 0.5),
        ):  # the CLI then takes seconds to start: the moves land later
            while done[0] < share * args.requests and loader.is_alive():
                time.sleep(0.05)
            moves.append(promote(f"{MOVED}/{version}", tracking_uri, workdir, 120))
        loader.join()
        time.sleep(0.5)
        watcher.stop.set()
        watcher.join()
        result["load_seconds"] = round(max(r["end"] for r in rows) - load_started, 1)
        result["moves_at_s"] = [round(m["moved"] - load_started, 1) for m in moves]
        result["checks"] = check(rows, moves, digests)
        result["moves"] = []
        for version, move in zip((2, 3), moves, strict=True):
            swaps = {url: t - move["moved"] for t, url, v in watcher.changes if v == version}
            result["moves"].append({
                "to": f"{MOVED}/{version}", "cli_seconds": round(move["command_end"] - move["command_start"], 2),
                "wait_seconds": move["wait"]["seconds"], "replicas_confirmed": len(move["wait"]["done"]),
                "alias_to_replica_s": {f"replica {urls.index(u)}": round(s, 2) for u, s in sorted(swaps.items())},
                "alias_to_last_replica_s": round(max(swaps.values()), 2) if len(swaps) == len(urls) else None,
                "alias_to_cli_confirmation_s": round(move["command_end"] - move["moved"], 2),
            })  # fmt: skip
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        result["seconds"] = round(time.perf_counter() - started, 1)
    finally:
        for process in reversed(processes):  # replicas first (they remove their webhooks), the registry last
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    print(json.dumps(result, indent=2))
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        stem = "fleet_bench" if args.webhooks else "fleet_bench_polling"
        (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / f"{stem}.md").write_text(to_markdown(result))


def to_markdown(r: dict[str, Any]) -> str:
    c = r["checks"]
    how = ("webhooks from a real `mlflow server` (each replica's own signed webhook; polling every 10 s as the "
           "safety net)" if r["webhooks"] else "a sqlite registry, each replica polling every 1 s")  # fmt: skip
    lines = [
        f"# Fleet-wide hot swap: {r['replicas']} replicas, {r['requests']} requests ({r['concurrency']} concurrent), "
        "the production alias moved twice", "",
        f"{r['machine']}, replica threads: {r['replica_threads']}, load average {r['load_average_at_start']} at start "
        f"and {r['load_average_at_end']} at the end (the cores are shared with other work). Tiny random Llama and "
        f"tiny LoRA adapters (the swap is measured, not generation); {how}. Heartbeats every 2 s and on change. "
        f"Load: {r['load_seconds']} s (at most {r['rate']:g} requests/s); the alias moved at "
        f"{' and '.join(f'{t} s' for t in r['moves_at_s'])}. Written by `benchmarks/fleet_bench.py` in "
        f"{r['seconds']} s.", "",
        "| check | result | goal |", "|---|---|---|",
        f"| failed requests | {c['failed']} of {c['requests']} | 0 |",
        f"| responses of the moved adapter | {c['moved_adapter_requests']} (v1/v2/v3: "
        f"{'/'.join(str(c['versions_answered'][v]) for v in ('1', '2', '3'))}) | |",
        f"| ... naming a version that held the alias neither at their start nor at their end | "
        f"{c['not_the_holder_at_start_or_end']} | |",
        f"| ... of which the previous version, from a replica not yet swapped, before `--wait` confirmed the fleet | "
        f"{c['of_which_previous_version_before_confirmation']} (of {c['in_propagation_windows']} requests in those "
        "windows) | |",
        f"| ... any other (after the confirmation, or another version) | {c['not_the_holder_outside_the_windows']} | 0 |",
        f"| responses of the old version started after a replica answered with the new one (flip back) | "
        f"{c['flip_backs']} | 0 |",
        f"| responses whose digest is not their version's registered one | {c['wrong_digest']} | 0 |", "",
        "| alias move | `promote --wait`, the CLI process (s) | decision → each replica serves it (s) | decision → "
        "last replica (s) | promotion written → `--wait` saw every replica serve it (s) |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for m in r["moves"]:
        per = ", ".join(f"{k}: {v}" for k, v in sorted(m["alias_to_replica_s"].items()))
        lines.append(f"| → {m['to']} | {m['cli_seconds']} ({m['replicas_confirmed']} replicas confirmed) | {per} | "
                     f"{m['alias_to_last_replica_s']} | {m['wait_seconds']} |")  # fmt: skip
    lines += [
        "", "\"decision\": the time the promotion's audit event records, taken just before it moves the alias, "
        "archives the replaced version and appends the event; \"each replica serves it\": its `/v1/adapters` names "
        "the new version (asked every 50 ms), so the figure includes the promotion's own registry writes. `--wait` "
        "starts once the promotion is written and confirms from the replicas' heartbeats (written when what a "
        "replica serves changes), read every second. The CLI process's own time is mostly Python's start-up and "
        "imports on the loaded machine.",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
