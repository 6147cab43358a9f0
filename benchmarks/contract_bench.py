"""Served = evaluated on a real registered adapter: every test row's raw request, sent to `serve` over HTTP, gets the
answer evaluation produced for that row, and the served exact match equals the registered one.

Run after `make run` (and a promotion, or with ``--stage candidate``):

    .venv/bin/python benchmarks/contract_bench.py --adapter acme_support_lora --stage production
    .venv/bin/python benchmarks/contract_bench.py --adapter globex_support_qlora --stage candidate

It reads the version the stage holds from the registry (``MLFLOW_TRACKING_URI`` or ``./mlflow.db``), the answers
its evaluation produced (``reports/predictions.json``, an artifact of its run) and its test split (the path in its
lineage), starts ``adapter-registry serve``'s server in this process (the base quantised as the contract says), sends
each row's raw request as ``input`` (``--concurrency`` at once, so the server batches them), and writes
``benchmarks/results/contract_bench_<adapter>.{json,md}``: rows, differences (0 is the goal), served and registered
exact match, throughput.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapter", default="acme_support_lora")
    parser.add_argument("--stage", default="production", choices=["production", "staging", "candidate"])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    args = parser.parse_args()

    from adapter_registry.environment import offline_defaults

    offline_defaults()
    import httpx
    import torch

    from adapter_registry.contract import ServingContract
    from adapter_registry.data.formats import read_records
    from adapter_registry.evaluation.evaluate import answer_key
    from adapter_registry.registry.entities import Tag
    from adapter_registry.registry.store import AdapterStore
    from adapter_registry.serving.app import ServeOptions, build_server

    torch.set_num_threads(args.threads)
    store = AdapterStore.from_env()
    version = store.resolve(f"{args.adapter}@{args.stage}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = store.pull(version.ref, Path(tmp) / "adapter") and Path(tmp) / "adapter"
        contract = ServingContract.read(folder)
        from mlflow.artifacts import download_artifacts

        predictions_file = download_artifacts(
            run_id=version.run_id, artifact_path="reports/predictions.json", dst_path=tmp,
            tracking_uri=store.tracking_uri,
        )  # fmt: skip
        evaluated = json.loads(Path(predictions_file).read_text())
    if contract is None:
        sys.exit(
            f"{version.ref} has no serving contract (registered before serving.json): nothing to compare"
        )
    records = read_records(ROOT / version.tags[Tag.data_path("test")])[: len(evaluated)]
    separator = contract.answer_separator

    port = _free_port()
    tenants = Path(tempfile.mkdtemp()) / "tenants.yml"
    tenants.write_text("tenants: {}\n")
    options = ServeOptions(
        stage=args.stage, port=port, tenants_file=tenants, request_log=None,
        quantization=contract.base_quantization, poll_seconds=3600,
    )  # fmt: skip
    server = build_server(version.base_id, options)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            sys.exit("the server did not start")
        time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    served_adapters = httpx.get(f"{url}/v1/adapters").json()
    if not any(a["name"] == args.adapter for a in served_adapters["adapters"]):
        server.should_exit = True
        sys.exit(f"{args.adapter} is not served: {served_adapters['refused']} {served_adapters['failed']}")

    def ask(record: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(f"{url}/v1/generate", json={"adapter": args.adapter, "input": record["prompt"]},
                              timeout=600)  # fmt: skip
        response.raise_for_status()
        return dict(response.json())

    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        answers = list(pool.map(ask, records))
    seconds = time.perf_counter() - started
    server.should_exit = True
    thread.join(timeout=30)

    differences = [
        {"row": i, "request": r["prompt"], "served": a["text"], "evaluated": e["adapter"].strip()}
        for i, (r, a, e) in enumerate(zip(records, answers, evaluated, strict=True))
        if a["text"].strip() != e["adapter"].strip()
    ]
    hits = [answer_key(a["text"], separator) == answer_key(r["completion"], separator) for a, r in zip(answers, records, strict=True)]  # fmt: skip
    result = {
        "adapter": version.ref, "stage": args.stage, "digest": answers[0]["digest"],
        "base": version.base_id, "base_quantization": contract.base_quantization or "none",
        "decoding": contract.decoding, "max_new_tokens": contract.max_new_tokens, "rows": len(records),
        "differences": len(differences), "difference_rows": differences[:20],
        "served_exact_match": sum(hits) / len(hits), "registered_exact_match": version.metrics.get("exact_match"),
        "concurrency": args.concurrency, "seconds": round(seconds, 2),
        "requests_per_s": round(len(records) / seconds, 2),
        "largest_batch": None, "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "examples": [{"request": r["prompt"], "served": a["text"]} for r, a in zip(records[:3], answers[:3], strict=True)],
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"contract_bench_{args.adapter}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    stem.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))
    if differences:
        sys.exit(1)


def _markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Served = evaluated: {r['adapter']} ({r['stage']})",
        "",
        "Every test row evaluation scored, its raw request sent to `serve` as `input` "
        f"({r['concurrency']} at once, so they were batched), compared with the answer evaluation produced.",
        "",
        "| rows | differences | served exact match | registered exact match | decoding | budget | base | req/s |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r['rows']} | {r['differences']} | {r['served_exact_match']:.4f} | {r['registered_exact_match']:.4f} "
        f"| {r['decoding']} | {r['max_new_tokens']} | {r['base']} ({r['base_quantization']}) | {r['requests_per_s']} |",
        "",
        f"Weights digest: `{r['digest']}`. Machine: {r['machine']}; {r['seconds']} s for all rows.",
        "",
        "Examples (request → served answer):",
        "",
        *[f"- `{e['request']}` → `{e['served']}`" for e in r["examples"]],
    ]
    if r["difference_rows"]:
        lines += ["", "Differences:", "", *[f"- row {d['row']}: served `{d['served']}`, evaluated "
                                            f"`{d['evaluated']}`" for d in r["difference_rows"]]]  # fmt: skip
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
