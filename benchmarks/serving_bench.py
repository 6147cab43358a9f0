"""Many adapters on one base: memory, switch time and mixed-batch throughput, AdapterPool against bare peft.

    .venv/bin/python benchmarks/serving_bench.py            # 50 adapters, the goals of issue 4 (~4 minutes)
    .venv/bin/python benchmarks/serving_bench.py --adapters 8 --runs 1   # a quick look

Base: SmolLM2-135M-Instruct (fp32, offline); sizes in MiB, as in shared/REFERENCE-FIGURES.md. Adapters: LoRA r=16 on all linear layers with random A and B
(B non-zero), saved by peft; no training needed to time serving. Writes benchmarks/results/serving_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from adapter_registry.environment import offline_defaults

RESULTS = Path(__file__).parent / "results"
PROMPTS = [
    "Write a short note to a customer whose parcel is late.",
    "Summarise: the meeting moved to Thursday at 10.",
    "Translate to French: good morning, how are you?",
    "List three fruits that are red.",
    "What is the capital of Italy?",
    "Explain what a LoRA adapter is in one sentence.",
    "Give a title for a blog post about tea.",
    "Reply politely: can I change my delivery address?",
]
GOALS = {"memory_ratio_max": 1.2, "switch_p50_ms_max": 5.0, "mixed_vs_single_min": 0.8}
REFERENCE = {  # bare peft on this machine class (shared/REFERENCE-FIGURES.md)
    "switch_p50_ms": 163, "switch_p99_ms": 172, "tokens_per_s": {"base": 118, "single": 100, "mixed": 44},
}  # fmt: skip


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def make_adapters(base_path: Path, folder: Path, count: int, rank: int) -> list[Path]:
    """``count`` random LoRA r=``rank`` all-linear adapters, saved by peft (one model, re-randomised)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    lora = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    out = []
    for i in range(count):
        torch.manual_seed(1000 + i)
        with torch.no_grad():
            for p in lora:  # small: a random adapter should bend the outputs, not wreck them
                p.normal_(0, 0.02)
        target = folder / f"tenant_{i:02d}"
        peft_model.save_pretrained(target)
        out.append(target)
    return out


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return {
        "p50_ms": round(statistics.median(ms), 4),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 4),
        "n": len(ms),
    }


def time_switches(switch: Any, names: list[str], count: int, seed: int = 0) -> dict[str, float]:
    rng = random.Random(seed)
    samples = []
    previous = None
    for _ in range(count):
        name = rng.choice([n for n in names if n != previous])
        start = time.perf_counter()
        switch(name)
        samples.append(time.perf_counter() - start)
        previous = name
    return percentiles(samples)


def one_generation(generate: Any, encoded: dict[str, torch.Tensor], new_tokens: int) -> tuple[float, float]:
    """Wall and process-CPU seconds of one greedy generation of exactly ``new_tokens`` per row."""
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = generate(encoded)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert out.shape[1] - encoded["input_ids"].shape[1] == new_tokens, out.shape
    return wall, cpu


def throughput(
    generators: dict[str, Any], encoded: dict[str, torch.Tensor], new_tokens: int, runs: int
) -> dict[str, dict[str, float]]:
    """Tokens/s of each generator, best of ``runs``, the configurations interleaved round by round so that
    load from other processes on the shared cores spreads over all of them. Also tokens per CPU-second."""
    best: dict[str, list[float]] = {key: [float("inf"), float("inf")] for key in generators}
    for round_ in range(runs):
        for key, generate in generators.items():
            wall, cpu = one_generation(generate, encoded, new_tokens)
            best[key] = [min(best[key][0], wall), min(best[key][1], cpu)]
            print(f"round {round_ + 1}: {key} {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    tokens = encoded["input_ids"].shape[0] * new_tokens
    out: dict[str, dict[str, float]] = {"pool": {}, "peft": {}, "pool_per_cpu_s": {}, "peft_per_cpu_s": {}}
    for key, (wall, cpu) in best.items():
        who, label = key.split(" ")
        out[who][label] = round(tokens / wall, 1)
        out[f"{who}_per_cpu_s"][label] = round(tokens / cpu, 1)
    for table in out.values():
        table["mixed_vs_single"] = round(table["mixed"] / table["single"], 2)
    return out


def bench_pool(base: Any, names: list[str], folders: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    """Memory, switch and throughput of AdapterPool; also the mixed batch's logits for the parity check."""
    from adapter_registry.serving.pool import AdapterPool

    out: dict[str, Any] = {}
    file_bytes = (folders[0] / "adapter_model.safetensors").stat().st_size
    rss_start = rss_bytes()
    pool = AdapterPool.from_pretrained(base.path, fingerprint=base.fingerprint)
    rss_base = rss_bytes()
    t0 = time.perf_counter()
    for name, folder in zip(names, folders, strict=True):
        pool.add(name, folder)
    out["load_s_per_adapter"] = round((time.perf_counter() - t0) / len(names), 3)
    rss_adapters = rss_bytes()
    memory = pool.memory()
    out["memory"] = {
        "base_mib": round(memory["base_bytes"] / 2**20, 1),
        "adapter_file_mib": round(file_bytes / 2**20, 2),
        "adapter_resident_mib": round(memory["adapters_total_bytes"] / len(names) / 2**20, 2),
        "base_plus_adapters_mib": round(memory["total_bytes"] / 2**20, 1),
        "merged_copies_mib": round(len(names) * memory["base_bytes"] / 2**20, 1),
        "saving_x": round(len(names) * memory["base_bytes"] / memory["total_bytes"], 1),
        "goal_mib": round((memory["base_bytes"] + GOALS["memory_ratio_max"] * len(names) * file_bytes) / 2**20, 1),
        "rss_base_delta_mib": round((rss_base - rss_start) / 2**20, 1),
        "rss_adapters_delta_mib": round((rss_adapters - rss_base) / 2**20, 1),
    }  # fmt: skip

    out["switch"] = time_switches(pool.activate, names, args.switches)
    one = pool.tokenizer(["Hello"], return_tensors="pt")

    def forward(name: str) -> None:
        with torch.inference_mode():
            pool.model(**one)

    def switch_and_forward(name: str) -> None:
        pool.activate(name)
        forward(name)

    pool.activate(names[0])
    out["forward_1_token"] = time_switches(forward, names, 50)
    out["switch_then_forward_1_token"] = time_switches(switch_and_forward, names, 50)
    pool.activate(None)

    encoded = pool.tokenizer(PROMPTS[: args.batch], return_tensors="pt", padding=True)

    def generate(adapters: list[str | None]) -> Any:
        def run(enc: dict[str, torch.Tensor]) -> torch.Tensor:
            with pool.routed(adapters):
                return pool.model.generate(
                    **enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                    pad_token_id=pool.tokenizer.pad_token_id,
                )  # fmt: skip

        return run

    mixed = mixed_names(names, args.batch)
    out["generators"] = {
        "base": generate([None] * args.batch), "single": generate([names[0]] * args.batch),
        "mixed": generate(list(mixed)),
    }  # fmt: skip
    with torch.inference_mode(), pool.routed(mixed):
        out["mixed_logits"] = pool.model(**encoded).logits
    out["encoded"] = encoded
    return out


def bench_peft(
    base: Any, names: list[str], folders: list[Path], args: argparse.Namespace, encoded: Any
) -> dict[str, Any]:
    """The same figures with bare peft: ``load_adapter`` × N, ``set_adapter``, ``adapter_names``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out: dict[str, Any] = {}
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32).eval()
    t0 = time.perf_counter()
    peft_model = PeftModel.from_pretrained(model, folders[0], adapter_name=names[0])
    for name, folder in zip(names[1:], folders[1:], strict=True):
        peft_model.load_adapter(folder, adapter_name=name)
    peft_model.eval()
    out["load_s_per_adapter"] = round((time.perf_counter() - t0) / len(names), 3)
    out["switch"] = time_switches(peft_model.base_model.set_adapter, names, max(20, args.switches // 10))
    mixed = mixed_names(names, args.batch)
    with torch.inference_mode():
        out["mixed_logits"] = peft_model(**encoded, adapter_names=mixed).logits
        rows = []  # each row through set_adapter(its adapter): the reference a mixed batch must match
        for i, name in enumerate(mixed):
            peft_model.set_adapter(name)
            rows.append(peft_model(**encoded).logits[i])
        out["single_logits"] = torch.stack(rows)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else model.config.eos_token_id

    def generate(adapters: list[str] | None) -> Any:
        def run(enc: dict[str, torch.Tensor]) -> torch.Tensor:
            kwargs = {} if adapters is None else {"adapter_names": adapters}
            return peft_model.generate(
                **enc, **kwargs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                do_sample=False, pad_token_id=pad,
            )  # fmt: skip

        return run

    def base_only(enc: dict[str, torch.Tensor]) -> torch.Tensor:
        with peft_model.disable_adapter():
            return generate(None)(enc)

    peft_model.base_model.set_adapter(names[0])  # the single-adapter runs use it; adapter_names ignores it
    out["generators"] = {"base": base_only, "single": generate(None), "mixed": generate(mixed)}
    return out


def mixed_names(names: list[str], batch: int) -> list[str]:
    return [names[i % len(names)] for i in range(batch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=50)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3, help="generations per configuration (best is kept)")
    parser.add_argument("--switches", type=int, default=500, help="pool switches timed (peft: a tenth)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    args = parser.parse_args()
    offline_defaults()
    if args.threads:
        torch.set_num_threads(args.threads)
    from adapter_registry.bases.resolve import resolve_reference

    started = time.perf_counter()
    base = resolve_reference("smollm2-135m-instruct")
    result: dict[str, Any] = {
        "base": base.identity, "fingerprint": base.fingerprint, "adapters": args.adapters, "rank": args.rank,
        "batch": args.batch, "new_tokens": args.new_tokens, "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "runs": args.runs,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        t0 = time.perf_counter()
        folders = make_adapters(base.path, Path(tmp), args.adapters, args.rank)
        result["make_adapters_s"] = round(time.perf_counter() - t0, 1)
        names = [f.name for f in folders]
        pool = bench_pool(base, names, folders, args)
        encoded = pool.pop("encoded")
        pool_logits = pool.pop("mixed_logits")
        peft = bench_peft(base, names, folders, args, encoded)
        generators = {}
        for label in ("base", "single", "mixed"):
            generators[f"pool {label}"] = pool["generators"][label]
            generators[f"peft {label}"] = peft["generators"][label]
        tps = result["tokens_per_s"] = throughput(generators, encoded, args.new_tokens, args.runs)
        result["rss_process_mib"] = round(rss_bytes() / 2**20, 1)
    real = encoded["attention_mask"].bool()  # logits at padding positions are not compared
    result["mixed_logits_max_abs_diff"] = {
        "pool_mixed_vs_peft_set_adapter_rows": float(
            (pool_logits - peft.pop("single_logits")).abs()[real].max()
        ),
        "peft_adapter_names_vs_pool_mixed": float((pool_logits - peft.pop("mixed_logits")).abs()[real].max()),
    }
    result["memory"] = pool.pop("memory")
    result["switch"] = {
        "pool": pool["switch"], "pool_then_forward_1_token": pool["switch_then_forward_1_token"],
        "pool_forward_1_token_alone": pool["forward_1_token"], "peft_set_adapter": peft["switch"],
    }  # fmt: skip
    result["load_s_per_adapter"] = {"pool": pool["load_s_per_adapter"], "peft": peft["load_s_per_adapter"]}
    memory = result["memory"]
    result["goals"] = {
        "memory": memory["base_plus_adapters_mib"] <= memory["goal_mib"],
        "switch": result["switch"]["pool"]["p50_ms"] <= GOALS["switch_p50_ms_max"],
        "mixed": tps["pool"]["mixed_vs_single"] >= GOALS["mixed_vs_single_min"],
    }
    result["reference_bare_peft"] = REFERENCE
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = round(time.perf_counter() - started, 1)
    markdown = to_markdown(result)
    print(json.dumps(result, indent=2))
    print(markdown)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "serving_bench.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "serving_bench.md").write_text(markdown)
        print(f"wrote {RESULTS / 'serving_bench.json'} and .md", file=sys.stderr)


def to_markdown(r: dict[str, Any]) -> str:
    m, s, t, d = r["memory"], r["switch"], r["tokens_per_s"], r["mixed_logits_max_abs_diff"]
    c, pc = t["pool_per_cpu_s"], t["peft_per_cpu_s"]
    ok = {True: "yes", False: "**no**"}
    n = r["adapters"]
    return f"""# Serving {n} LoRA adapters (r={r["rank"]}, all-linear) on {r["base"]}

{r["machine"]}, {r["torch_threads"]} torch threads, load average {r["load_average_at_start"]} at start and
{r["load_average_at_end"]} at the end (the cores are shared: compare the two columns, which ran back to back,
rather than absolute figures). fp32; batch {r["batch"]} × {r["new_tokens"]} new tokens, greedy.
Tokens/s: best of {r["runs"]} generations, pool and peft interleaved. Process RSS at the end: {r["rss_process_mib"]} MiB
(both the pool and the peft model with {n} adapters are resident then). Written by `benchmarks/serving_bench.py` in {r["wall_s"]} s.

| what | AdapterPool | bare peft (same run) | goal | met |
|---|---|---|---|---|
| parameters: base / base + {n} adapters / {n} merged copies (MiB) | {m["base_mib"]} / {m["base_plus_adapters_mib"]} / {m["merged_copies_mib"]} ({m["saving_x"]}× saved) | same parameters | ≤ {m["goal_mib"]} | {ok[r["goals"]["memory"]]} |
| one adapter: file / resident (MiB) | {m["adapter_file_mib"]} / {m["adapter_resident_mib"]} | | | |
| process RSS: base load / {n} adapters load (MiB) | +{m["rss_base_delta_mib"]} / +{m["rss_adapters_delta_mib"]} | | | |
| switch with {n} loaded, p50 / p99 (ms) | {s["pool"]["p50_ms"]} / {s["pool"]["p99_ms"]} | {s["peft_set_adapter"]["p50_ms"]} / {s["peft_set_adapter"]["p99_ms"]} (`set_adapter`) | p50 ≤ 5 | {ok[r["goals"]["switch"]]} |
| switch then a 1-token forward, p50 (ms) (forward alone) | {s["pool_then_forward_1_token"]["p50_ms"]} ({s["pool_forward_1_token_alone"]["p50_ms"]}) | | | |
| tokens/s: base / one adapter / {r["batch"]} adapters mixed | {t["pool"]["base"]} / {t["pool"]["single"]} / {t["pool"]["mixed"]} | {t["peft"]["base"]} / {t["peft"]["single"]} / {t["peft"]["mixed"]} (`adapter_names`) | | |
| mixed ÷ single | {t["pool"]["mixed_vs_single"]} | {t["peft"]["mixed_vs_single"]} | ≥ 0.8 | {ok[r["goals"]["mixed"]]} |
| tokens per CPU-second: base / one / mixed (mixed ÷ single) | {c["base"]} / {c["single"]} / {c["mixed"]} ({c["mixed_vs_single"]}) | {pc["base"]} / {pc["single"]} / {pc["mixed"]} ({pc["mixed_vs_single"]}) | | |
| load one adapter (s) | {r["load_s_per_adapter"]["pool"]} | {r["load_s_per_adapter"]["peft"]} (`load_adapter`) | | |

Mixed-batch logits (non-padding positions): pool vs each row through peft `set_adapter` max |diff| =
{d["pool_mixed_vs_peft_set_adapter_rows"]:.2e}; pool vs peft `adapter_names` {d["peft_adapter_names_vs_pool_mixed"]:.2e}.
Reference, bare peft on an idle machine of this class (shared/REFERENCE-FIGURES.md): switch
{REFERENCE["switch_p50_ms"]} / {REFERENCE["switch_p99_ms"]} ms; tokens/s {REFERENCE["tokens_per_s"]["base"]} / {REFERENCE["tokens_per_s"]["single"]} / {REFERENCE["tokens_per_s"]["mixed"]}.
"""


if __name__ == "__main__":
    main()
