"""Issue 21's live check, the ONE script for a GPU machine with vLLM installed: served = evaluated, on vLLM.

Not run on the project's CPU machines (it refuses without vLLM and writes nothing); until a GPU session runs it,
the live check is owed. It installs nothing: vLLM and the project's dependencies (mlflow, peft, transformers) must
be importable, and the project's ``src/`` is put on the path of every process it starts.

What it does, within ``--timeout`` seconds in all (default 480):

1. builds a throw-away registry in a temp folder (the project's registry is never touched): the acme adapter
   (``--adapter-dir``, default ``data/06_models/acme_support_lora/adapter``, the folder ``make run`` registered) as
   ``acme_support_lora`` version 1, a copy with its LoRA B matrices scaled by 0.9 as version 2, and 8 scaled copies
   ``bench_1`` .. ``bench_8`` for the throughput test; each placed in production by an audited promotion;
2. starts ``vllm serve`` on the SmolLM2 base the adapter was trained on (``--base``: the offline base's converted
   folder by default) with ``--enable-lora`` and this project's LoRA resolver plugin (through its
   ``vllm.general_plugins`` entry point; where the project is not installed, a temporary dist-info on the server's
   path declares it);
3. resolver: ``acme_support_lora@production`` and the tenant ``acme`` are served by version 1 under its digest name;
4. served = evaluated: every acme test row evaluation scored, asked through the serving contract with vLLM's
   structured output (``adapter_registry.vllm.request_body``: the category one of the answer set, the reply free
   after the separator), compared with the answers evaluation produced: the registered ``predictions.json``
   (``--predictions``, default ``data/08_reporting/acme_support_lora/predictions.json``) when present, else the rows
   decoded here as evaluation decodes them (transformers + peft, float32, ``decoding.AnswerConstraint``). Whole
   answers and categories (what exact match scores) are compared; the categories are also asked as a plain choice;
5. alias move while requests flow: clients keep asking ``acme_support_lora@production`` while version 2 is
   promoted and ``vllm-sync`` runs once; no request may fail, and afterwards the answers name version 2's digest;
6. throughput: the same requests (``--requests``, 64 new tokens each, ``ignore_eos``) to one adapter, then spread
   over the 8 copies (loaded by ``vllm-sync`` under their digest names), at ``--concurrency``.

It writes ``benchmarks/results/vllm_live_check.json`` and ``.md`` (``--results`` for another folder), and exits 0
when every check passed, 1 when one failed, 2 when it could not run.

On the device machine (``run`` tool), carry the adapter folder and the test rows, which git does not hold:
``carry: ["data/06_models/acme_support_lora/adapter", "data/05_model_input/acme_support",
"data/08_reporting/acme_support_lora/predictions.json"]``, and run
``python benchmarks/vllm_live_check.py --timeout 480``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
RESULTS = ROOT / "benchmarks" / "results"
NEEDED = ("vllm", "torch", "transformers", "peft", "mlflow", "safetensors", "httpx", "yaml")
PLUGIN = "adapter_registry_lora_resolver"
NAME = "acme_support_lora"
TENANT = "acme"
COPIES = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--adapter-dir", type=Path, default=ROOT / "data/06_models/acme_support_lora/adapter")
    parser.add_argument("--recipe", type=Path, default=ROOT / "pipelines/acme_support_lora.yaml")
    parser.add_argument("--rows", type=Path, default=ROOT / "data/05_model_input/acme_support/test.jsonl")
    parser.add_argument(
        "--predictions",
        type=Path,
        default=ROOT / "data/08_reporting/acme_support_lora/predictions.json",
        help="the answers evaluation produced (evaluated again here when the file is absent)",
    )
    parser.add_argument(
        "--base", default="smollm2-135m-instruct", help="offline base name, or a model folder"
    )
    parser.add_argument("--dtype", default="auto", help="vLLM's --dtype (auto: float16 for a float32 base)")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=480.0, help="seconds for the whole check")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--eager", action="store_true", help="vLLM --enforce-eager (faster start, slower decode)"
    )
    return parser.parse_args(argv)


def missing_modules() -> list[str]:
    """The needed modules that are not installed (a folder of that name on the path, with no __init__.py, is
    not the module: a namespace package has no origin)."""
    return [m for m in NEEDED if getattr(importlib.util.find_spec(m), "origin", None) is None]


class Deadline:
    """The check's time budget: every step asks how much is left."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, step: str) -> None:
        if self.left() <= 0:
            raise TimeoutError(f"out of time before {step}")


# ------------------------------------------------------------------------------------------------ setup
def plugin_dist_info(folder: Path) -> Path | None:
    """None when the plugin's entry point is visible (the project is installed); else a folder holding a minimal
    dist-info that declares it, to put on the vLLM server's PYTHONPATH (nothing is installed)."""
    from importlib.metadata import entry_points

    if any(e.name == PLUGIN for e in entry_points(group="vllm.general_plugins")):
        return None
    info = folder / "adapter_registry_vllm_plugin-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: adapter-registry-vllm-plugin\nVersion: 0.0.0\n"
    )
    (info / "entry_points.txt").write_text(
        f"[vllm.general_plugins]\n{PLUGIN} = adapter_registry.vllm.resolver:register\n"
    )
    return folder


def scaled_copy(source: Path, dest: Path, factor: float) -> Path:
    """A copy of a LoRA folder with every lora_B matrix multiplied by ``factor``: another digest, close answers."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, dest)
    weights = load_file(source / "adapter_model.safetensors")
    scaled = {k: (v * factor if ".lora_B." in k else v).contiguous() for k, v in weights.items()}
    save_file(scaled, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})
    return dest


def contract_for(adapter_dir: Path, recipe_path: Path) -> Any:
    """The adapter's serving contract; for a folder registered before contracts, built from its recipe and its
    answers.json (what evaluation used)."""
    from adapter_registry.contract import ServingContract, contract_of
    from adapter_registry.recipes.load import load_recipe

    contract = contract_of(adapter_dir)
    if contract.complete:
        return contract
    recipe = load_recipe(recipe_path)
    return ServingContract(
        task="causal_lm_sft", format=recipe.data.format, prompt_template=recipe.task.prompt_template,
        answer_separator=recipe.task.answer_field_separator, decoding=recipe.evaluation.decoding,
        answers=contract.answers, max_new_tokens=recipe.evaluation.max_new_tokens,
    )  # fmt: skip


def build_registry(workdir: Path, adapter_dir: Path, base: Any, contract: Any) -> Any:
    """A throw-away sqlite registry: acme v1 (the adapter) and v2 (scaled), bench_1..8; every one in production by
    an audited promotion. Returns the store."""
    from adapter_registry.registry import promotion
    from adapter_registry.registry.entities import Tag
    from adapter_registry.registry.policy import Actor, PromotionPolicy
    from adapter_registry.registry.store import AdapterStore

    store = AdapterStore(f"sqlite:///{workdir / 'mlflow.db'}")  # its run artifacts land in the cwd's mlruns/
    tags = {
        Tag.BASE_ID: base.identity, Tag.BASE_REVISION: base.revision, Tag.BASE_FINGERPRINT: base.fingerprint,
        Tag.BASE_ARCHITECTURE: base.architecture, Tag.TASK: "causal_lm_sft", Tag.METHOD: "lora",
    }  # fmt: skip
    source = workdir / "acme-1"
    shutil.copytree(adapter_dir, source)
    contract.write(source)
    folders = [(NAME, source), (NAME, scaled_copy(source, workdir / "acme-2", 0.9))]
    folders += [
        (f"bench_{i}", scaled_copy(source, workdir / f"bench-{i}", 1 - 0.01 * i))
        for i in range(1, COPIES + 1)
    ]
    policy, actor = PromotionPolicy(enforce="never"), Actor("vllm-live-check", False)
    for name, folder in folders:
        version = store.register_adapter(name, folder, tags=tags, metrics={})
        if (name, version.version) != (NAME, 2):  # acme v2 is promoted while requests flow
            promotion.promote(store, version.ref, "production", force=True, reason="vllm live check",
                              policy=policy, actor=actor)  # fmt: skip
    return store


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_vllm(
    args: argparse.Namespace,
    base_path: Path,
    port: int,
    workdir: Path,
    plugin_path: Path | None,
    tracking_uri: str,
) -> Any:
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(base_path), "--port", str(port),
        "--host", "127.0.0.1", "--enable-lora", "--max-lora-rank", "16", "--max-loras", str(COPIES),
        "--max-cpu-loras", str(2 * COPIES + 4), "--max-model-len", "512", "--gpu-memory-utilization", "0.5",
        "--dtype", args.dtype, "--seed", "0", *(["--enforce-eager"] if args.eager else []),
    ]  # fmt: skip
    path = [str(SRC), *([str(plugin_path)] if plugin_path else []), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_PLUGINS": PLUGIN, "MLFLOW_TRACKING_URI": tracking_uri,
        "ADAPTER_REGISTRY_VLLM_CACHE": str(workdir / "cache"),
        "ADAPTER_REGISTRY_TENANTS": str(workdir / "tenants.yml"), "HF_HUB_OFFLINE": "1",
    }  # fmt: skip
    (workdir / "tenants.yml").write_text(f"tenants:\n  {TENANT}: {NAME}\n")
    log = (workdir / "vllm.log").open("w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(url: str, process: Any, deadline: Deadline, log: Path) -> float:
    import httpx

    started = time.monotonic()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"vllm serve exited ({process.returncode}): {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        deadline.check("vLLM became ready")
        time.sleep(1)


def stop(process: Any) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# ------------------------------------------------------------------------------------------------ checks
def ask(client: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    if response.status_code != 200:
        raise RuntimeError(f"{path} {body.get('model')}: {response.status_code} {response.text[:300]}")
    return dict(response.json())


def check_resolver(client: Any, store: Any, contract: Any) -> dict[str, Any]:
    from adapter_registry.vllm.export import lora_name
    from adapter_registry.vllm.request_body import request_body

    expected = lora_name(store.get_version(NAME, 1))
    served = {}
    for requested in (f"{NAME}@production", TENANT):
        path, body = request_body(contract, requested, "My parcel never arrived")
        served[requested] = ask(client, path, body)["model"]
    return {"ok": all(v == expected for v in served.values()), "expected": expected, "served_as": served}


def evaluation_answers(
    base_path: Path, adapter_dir: Path, contract: Any, records: list[dict[str, Any]], max_length: int
) -> list[str]:
    """The rows decoded as evaluation decodes them: transformers + peft in float32, through the contract (its
    budget; the answer set with the reply free after the separator: ``decoding.AnswerConstraint``)."""
    import torch
    from peft import PeftModel

    from adapter_registry.decoding import AnswerConstraint
    from adapter_registry.evaluation.evaluate import generate
    from adapter_registry.training.models import load_base_model, load_tokenizer

    tokenizer = load_tokenizer(base_path)
    model = PeftModel.from_pretrained(load_base_model(base_path, "causal_lm_sft"), str(adapter_dir)).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    constraint = None
    if contract.decoding == "constrained":
        constraint = AnswerConstraint.build(list(contract.answers), tokenizer, contract.answer_separator)
    budget = max(contract.max_new_tokens, constraint.longest if constraint else 0)
    prompts = [contract.render(r) for r in records]
    return list(generate(model, tokenizer, prompts, budget, max_length, constraint=constraint))


def check_guided(client: Any, contract: Any, records: list[dict[str, Any]], gold: list[str], reference: list[str],
                 source: str) -> dict[str, Any]:  # fmt: skip
    """Every row asked through the contract (category and free reply), and its category alone as a choice."""
    from adapter_registry.evaluation.evaluate import answer_key
    from adapter_registry.vllm.request_body import answer_text, request_body

    separator = contract.answer_separator

    def one(record: dict[str, Any], free_reply: bool = True) -> str:
        path, body = request_body(contract, f"{NAME}@production", record, free_reply=free_reply)
        return answer_text(ask(client, path, body))

    with ThreadPoolExecutor(16) as pool:
        served = list(pool.map(one, records))
        categories = list(pool.map(lambda r: one(r, free_reply=False), records))
    n = len(records)
    keys = [answer_key(s, separator) for s in served]
    ref = [answer_key(r, separator) for r in reference]
    differ = [{"row": i, "vllm": s, "evaluation": r} for i, (s, r) in enumerate(zip(served, reference, strict=True))
              if s.strip() != r.strip()]  # fmt: skip
    return {
        "ok": keys == ref, "rows": n, "reference": source, "equal_answers": n - len(differ),
        "equal_categories": sum(k == r for k, r in zip(keys, ref, strict=True)),
        "equal_categories_as_choice": sum(answer_key(c, separator) == r for c, r in zip(categories, ref, strict=True)),
        "exact_match_vllm": round(sum(k == g for k, g in zip(keys, gold, strict=True)) / n, 4),
        "exact_match_evaluation": round(sum(k == g for k, g in zip(ref, gold, strict=True)) / n, 4),
        "differ": differ[:20],
    }  # fmt: skip


def check_alias_move(client: Any, url: str, store: Any, contract: Any, workdir: Path) -> dict[str, Any]:
    """Requests keep flowing to NAME@production while v2 is promoted (audited) and vllm-sync runs once."""
    from adapter_registry.registry import promotion
    from adapter_registry.registry.policy import Actor, PromotionPolicy
    from adapter_registry.vllm.export import lora_name
    from adapter_registry.vllm.request_body import request_body
    from adapter_registry.vllm.resolver import RegistryResolver
    from adapter_registry.vllm.sync import FleetSync, VllmServer

    v1, v2 = lora_name(store.get_version(NAME, 1)), lora_name(store.get_version(NAME, 2))
    answers: list[tuple[float, str]] = []
    failures: list[str] = []
    stop_flag = threading.Event()

    def client_loop() -> None:
        while not stop_flag.is_set():
            path, body = request_body(contract, f"{NAME}@production", "I was charged twice for my order")
            try:
                answers.append((time.monotonic(), ask(client, path, body)["model"]))
            except Exception as exc:
                failures.append(str(exc)[:300])

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    promotion.promote(store, f"{NAME}/2", "production", force=True, reason="vllm live check: alias move",
                      policy=PromotionPolicy(enforce="never"), actor=Actor("vllm-live-check", False))  # fmt: skip
    resolver = RegistryResolver(store, workdir / "cache", tenants={TENANT: NAME}, max_lora_rank=16)
    server = VllmServer(url)
    report = FleetSync(resolver, [server]).sync_once()
    moved_at = time.monotonic()
    time.sleep(3)
    stop_flag.set()
    for t in threads:
        t.join()
    server.close()
    after = [m for when, m in answers if when > moved_at + 0.5]
    before = [m for when, m in answers if when < moved_at]
    return {
        "ok": not failures and bool(after) and set(after) == {v2} and set(before) <= {v1, v2},
        "requests": len(answers), "failed": failures[:10], "served_before_sync": sorted(set(before)),
        "served_after_sync": sorted(set(after)), "sync": report.to_dict(),
    }  # fmt: skip


def throughput(client: Any, models: list[str], prompt: str, n: int, concurrency: int) -> dict[str, Any]:
    def one(i: int) -> int:
        body = {"model": models[i % len(models)], "prompt": prompt, "max_tokens": 64, "temperature": 0,
                "ignore_eos": True}  # fmt: skip
        return int(ask(client, "/v1/completions", body)["usage"]["completion_tokens"])

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, range(n)))
    seconds = time.perf_counter() - started
    return {"adapters": len(models), "requests": n, "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1)}  # fmt: skip


# ------------------------------------------------------------------------------------------------ results
def write_results(results: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "vllm_live_check.json", folder / "vllm_live_check.md"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    lines = [
        "# vLLM live check (issue 21)", "",
        f"`python benchmarks/vllm_live_check.py` on {results.get('device', '?')}, vLLM {results.get('vllm', '?')}, "
        f"{results.get('when', '')}; {results.get('seconds', '?')} s; vLLM ready in {results.get('ready_s', '?')} s.",
        "", "| check | ok | result |", "|---|---|---|",
    ]  # fmt: skip
    checks = results.get("checks", {})
    for name, check in checks.items():
        summary = {k: v for k, v in check.items() if k not in ("ok", "differ", "sync", "failed")}
        lines.append(
            f"| {name} | {'yes' if check.get('ok') else '**no**'} | `{json.dumps(summary, default=str)}` |"
        )
    if "throughput" in results:
        one, mixed = results["throughput"]["one"], results["throughput"]["mixed"]
        lines += ["", f"Throughput: one adapter {one['tokens_per_s']} tokens/s, {mixed['adapters']} adapters mixed "
                  f"{mixed['tokens_per_s']} tokens/s ({mixed['tokens_per_s'] / one['tokens_per_s']:.2f}x), "
                  f"{one['requests']} requests of 64 new tokens each."]  # fmt: skip
    if results.get("error"):
        lines += ["", f"Stopped: {results['error']}"]
    lines += ["", f"Passed: {'yes' if results.get('passed') else 'no'}.", ""]
    md_path.write_text("\n".join(lines))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_modules()
    if missing:
        print(f"vllm_live_check: not run: missing {', '.join(missing)} (it installs nothing; run it on a GPU "
              "machine with vLLM and the project's dependencies); no results written", file=sys.stderr)  # fmt: skip
        return 2
    for needed in (args.adapter_dir / "adapter_config.json", args.rows):
        if not needed.exists():
            print(f"vllm_live_check: not run: {needed} is missing (carry it to the device); no results written",
                  file=sys.stderr)  # fmt: skip
            return 2
    sys.path.insert(0, str(SRC))
    from adapter_registry.environment import offline_defaults

    offline_defaults()
    import httpx
    import torch

    import vllm

    deadline = Deadline(args.timeout)
    started = time.monotonic()
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "vllm": vllm.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU", "checks": {},
    }  # fmt: skip
    process = None
    workdir = Path(tempfile.mkdtemp(prefix="vllm-live-check-"))
    for name in ("adapter_dir", "recipe", "rows", "predictions", "results"):
        setattr(args, name, getattr(args, name).resolve())
    cwd = Path.cwd()
    os.chdir(workdir)  # the throw-away registry's artifacts go here, not into the project
    try:
        from adapter_registry.bases.resolve import describe_folder, offline_base_path

        base_path = Path(args.base) if Path(args.base).is_dir() else offline_base_path(args.base)
        base = describe_folder(base_path, identity=args.base if not Path(args.base).is_dir() else None,
                               source="offline" if not Path(args.base).is_dir() else "path")  # fmt: skip
        contract = contract_for(args.adapter_dir, args.recipe)
        store = build_registry(workdir, args.adapter_dir, base, contract)
        from adapter_registry.evaluation.evaluate import answer_key
        from adapter_registry.recipes.load import load_recipe

        recipe = load_recipe(args.recipe)
        rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
        rows = rows[: recipe.evaluation.max_test_rows] if recipe.evaluation.max_test_rows else rows
        records = [{"prompt": r["prompt"]} for r in rows]
        gold = [answer_key(r["completion"], contract.answer_separator) for r in rows]
        if args.predictions.is_file():  # what evaluation produced for these rows, registered with the version
            evaluated = json.loads(args.predictions.read_text())
            rendered = [contract.render(r) for r in records[: len(evaluated)]]
            if [e["prompt"] for e in evaluated] != rendered:
                raise RuntimeError(f"{args.predictions} was scored on other prompts than these rows renders")
            records, gold = records[: len(evaluated)], gold[: len(evaluated)]
            reference, source = [e["adapter"] for e in evaluated], str(args.predictions)
        else:
            reference = evaluation_answers(
                base_path, workdir / "acme-1", contract, records, recipe.training.max_length
            )
            source = "evaluated here (transformers + peft, float32)"
        results["evaluation_rows"] = len(records)
        deadline.check("starting vLLM")

        port = args.port or free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_vllm(
            args, base_path, port, workdir, plugin_dist_info(workdir / "plugin"), store.tracking_uri
        )
        results["ready_s"] = round(wait_ready(url, process, deadline, workdir / "vllm.log"), 1)
        with httpx.Client(base_url=url, timeout=120) as client:
            results["checks"]["resolver"] = check_resolver(client, store, contract)
            deadline.check("served = evaluated")
            results["checks"]["served_equals_evaluated"] = check_guided(
                client, contract, records, gold, reference, source
            )
            deadline.check("the alias move")
            results["checks"]["alias_move"] = check_alias_move(client, url, store, contract, workdir)
            deadline.check("throughput")
            from adapter_registry.vllm.export import lora_name
            from adapter_registry.vllm.resolver import RegistryResolver
            from adapter_registry.vllm.sync import FleetSync, VllmServer

            server = VllmServer(url)
            FleetSync(RegistryResolver(store, workdir / "cache", max_lora_rank=16), [server]).sync_once()
            server.close()
            bench = [lora_name(store.get_version(f"bench_{i}", 1)) for i in range(1, COPIES + 1)]
            prompt = contract.render("My parcel never arrived and I want a refund")
            throughput(
                client, bench, prompt, min(32, args.requests), args.concurrency
            )  # warm-up: every LoRA loaded
            results["throughput"] = {
                "one": throughput(client, bench[:1], prompt, args.requests, args.concurrency),
                "mixed": throughput(client, bench, prompt, args.requests, args.concurrency),
            }
    except Exception as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        log = workdir / "vllm.log"
        if log.is_file():
            results["vllm_log_tail"] = log.read_text()[-4000:]
    finally:
        stop(process)
        os.chdir(cwd)
        shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["passed"] = (
        not results.get("error")
        and all(c.get("ok") for c in results["checks"].values())
        and len(results["checks"]) == 3
    )
    json_path, md_path = write_results(results, args.results)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
