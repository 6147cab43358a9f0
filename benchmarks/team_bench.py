"""Many writers at once on the team stack (mlflow server on PostgreSQL with basic-auth): 8 processes registering
versions of one adapter, then 8 processes promoting and rolling back one adapter, with and without the writer lock.

Run: ``.venv/bin/python benchmarks/team_bench.py [--writers 8]``; writes ``benchmarks/results/team_bench.{json,md}``.

Registration: each writer process registers its own tiny LoRA adapter (real peft weights, a different seed each) as
a version of ``team_bench`` through ``AdapterStore.register_adapter`` (upload, sha256 check of the upload, version,
candidate alias) at the same moment. A ``kedro run`` of 8 tiny recipes would add 8 × (Kedro start-up, GX
validation, a training run) on 2 cores and test the same registration step, so the writers call it directly.
Checked: versions registered / expected, distinct numbers, every version's files pulled back and sha256-checked
against the writer's own files, lineage tags present, ``candidate`` on the newest version.

Promotion: 8 writer processes promote versions to production and roll it back (forced, so gates do not refuse)
at the same moment, once through the normal store (the writer lock, ``registry.locking``) and once through a
store whose lock is switched off (what every client did before): audit events / expected, forks (sequence
numbers written twice), an intact hash chain, and whether the production alias is what the last event says.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adapter_registry.environment import offline_defaults

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NAME = "team_bench"


def adapter(folder: Path, seed: int) -> Path:
    """A real (tiny) peft LoRA folder whose weights depend on ``seed``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))  # fmt: skip
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    (folder / "README.md").write_text(f"# team bench adapter, writer {seed}\n")
    return folder


def lineage(writer: int) -> dict[str, str]:
    from adapter_registry.registry.entities import Tag

    return {
        Tag.RECIPE_NAME: NAME, Tag.RECIPE_HASH: f"{writer:064x}", Tag.TASK: "causal_lm_sft", Tag.METHOD: "lora",
        Tag.METHOD_FAMILY: "reparameterisation", Tag.BASE_ID: "tiny-llama", Tag.BASE_FINGERPRINT: "sha256:" + "f" * 64,
        Tag.BASE_ARCHITECTURE: "LlamaForCausalLM", Tag.GIT_COMMIT: "0" * 40, Tag.GIT_DIRTY: "false",
        Tag.GATES: json.dumps(["exact_match >= 0.8"]), Tag.data_path("train"): "data/team/train.jsonl",
        Tag.data_md5("train"): f"{writer:032x}", "ar.user.writer": str(writer),
    }  # fmt: skip


def _register(writer: int, folder: str, start_at: float, out: Any) -> None:
    """One writer process: wait for the common start, register, report (version, seconds) or the error."""
    offline_defaults()
    from adapter_registry.registry.store import AdapterStore

    store = AdapterStore(os.environ["MLFLOW_TRACKING_URI"])
    time.sleep(max(0.0, start_at - time.time()))
    start = time.perf_counter()
    try:
        version = store.register_adapter(
            NAME, Path(folder), lineage(writer), {"exact_match": 0.9, "beats_base": 1.0}
        )
        out.put((writer, version.version, time.perf_counter() - start, ""))
    except Exception as exc:
        out.put((writer, None, time.perf_counter() - start, f"{type(exc).__name__}: {exc}"))


class Unlocked:
    """The store with its writer lock switched off: what every client did before registry.locking."""

    def __new__(cls, uri: str) -> Any:
        from adapter_registry.registry.store import AdapterStore

        class UnlockedStore(AdapterStore):
            @contextlib.contextmanager
            def writer_lock(self, name: str) -> Iterator[None]:
                yield

        return UnlockedStore(uri)


def _promote(writer: int, name: str, op: str, locked: bool, start_at: float, out: Any) -> None:
    offline_defaults()
    from adapter_registry.registry import promotion
    from adapter_registry.registry.entities import RegistryError
    from adapter_registry.registry.policy import Actor, PromotionPolicy
    from adapter_registry.registry.store import AdapterStore

    uri = os.environ["MLFLOW_TRACKING_URI"]
    store = AdapterStore(uri) if locked else Unlocked(uri)
    policy, actor = PromotionPolicy(enforce="never"), Actor(f"writer{writer}", False)
    time.sleep(max(0.0, start_at - time.time()))
    start = time.perf_counter()
    try:
        if op == "rollback":
            promotion.rollback(
                store, name, "production", force=True, reason=f"w{writer}", policy=policy, actor=actor
            )
        else:
            promotion.promote(store, f"{name}/{op.split()[1]}", "production", force=True, reason=f"w{writer}",
                              policy=policy, actor=actor)  # fmt: skip
        out.put((writer, "event", time.perf_counter() - start, ""))
    except RegistryError as exc:  # refused before any event (e.g. already holds production)
        out.put((writer, "none", time.perf_counter() - start, exc.message))
    except Exception as exc:
        out.put((writer, "error", time.perf_counter() - start, f"{type(exc).__name__}: {exc}"))


def _spawn(ctx: Any, target: Any, argsets: list[tuple[Any, ...]]) -> tuple[list[Any], float]:
    out = ctx.Queue()
    start_at = time.time() + 8.0  # every process imported and connected before the common start
    procs = [ctx.Process(target=target, args=(*a, start_at, out)) for a in argsets]
    for p in procs:
        p.start()
    results = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return sorted(results), max(r[2] for r in results)


def promotion_round(
    ctx: Any, store: Any, name: str, writers: int, locked: bool, folder: Path
) -> dict[str, Any]:
    from adapter_registry.registry import promotion
    from adapter_registry.registry.audit import AuditLog
    from adapter_registry.registry.policy import Actor, PromotionPolicy
    from adapter_registry.registry.stages import replay

    for seed in range(3):
        store.register_adapter(
            name, folder / f"w{seed}", lineage(seed), {"exact_match": 0.9, "beats_base": 1.0}
        )
    promotion.promote(store, f"{name}/1", "production", force=True, reason="start",
                      policy=PromotionPolicy(enforce="never"), actor=Actor("bench", False))  # fmt: skip
    cycle = ["promote 2", "promote 3", "rollback", "promote 1"]
    ops = [cycle[i % len(cycle)] for i in range(writers)]
    results, slowest = _spawn(ctx, _promote, [(i, name, op, locked) for i, op in enumerate(ops)])
    trail = AuditLog(store).read(name)
    expected = 1 + sum(r[1] == "event" for r in results)
    forks = sum("appears twice" in p for p in trail.problems)
    last = replay([e for e in trail.events if e.verified]).get("production")
    holder = store.holder(name, "production")
    return {
        "locked": locked, "writers": writers, "ops": ops, "events": len(trail.events), "events_expected": expected,
        "forks": forks, "chain_intact": trail.intact, "problems": list(trail.problems),
        "holder": holder.version if holder else None, "last_event_says": last.version if last else None,
        "holder_matches_last_event": bool(holder and last and holder.version == last.version),
        "refused_before_any_event": sum(r[1] == "none" for r in results),
        "errors": [r[3] for r in results if r[1] == "error"], "slowest_writer_seconds": round(slowest, 2),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8)
    args = parser.parse_args()
    offline_defaults()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from adapter_registry.checksums import sha256_folder
    from adapter_registry.registry.store import AdapterStore
    from adapter_registry.stack import Stack, free_port

    started = time.perf_counter()
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="team-bench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o711)  # as root, PostgreSQL runs as the postgres user, who must enter this folder
        os.chdir(work)
        stack = Stack(work / "stack")
        up_start = time.perf_counter()
        stack.up(port=free_port(), workers=2)
        up_s = time.perf_counter() - up_start
        os.environ.update(line.removeprefix("export ").split("=", 1) for line in stack.exports())
        try:
            folders = {w: adapter(work / f"w{w}", seed=w) for w in range(args.writers)}
            regs, slowest = _spawn(ctx, _register, [(w, str(f)) for w, f in folders.items()])
            store = AdapterStore(os.environ["MLFLOW_TRACKING_URI"])
            versions = store.list_versions(name=NAME)
            by_writer = {int(v.tags.get("ar.user.writer", -1)): v for v in store.list_versions(name=NAME)}
            verified, lineage_complete = 0, 0
            for writer, folder in folders.items():
                version = by_writer.get(writer)
                if version is None:
                    continue
                full = store.get_version(NAME, version.version)
                pulled = work / "pulled" / str(version.version)
                store.pull(full.ref, pulled)  # raises unless every registered sha256 matches
                verified += sha256_folder(pulled) == sha256_folder(folder) == full.checksums
                lineage_complete += all(full.tags.get(k) == v for k, v in lineage(writer).items())
                shutil.rmtree(pulled)
            candidate = store.holder(NAME, "candidate")
            registration = {
                "writers": args.writers, "versions_registered": len(versions), "versions_expected": args.writers,
                "distinct_numbers": sorted(v.version for v in versions) == list(range(1, args.writers + 1)),
                "artifacts_sha256_verified": verified, "lineage_complete": lineage_complete,
                "candidate_is_newest": bool(candidate) and candidate.version == max(v.version for v in versions),
                "errors": [r[3] for r in regs if r[3]], "slowest_writer_seconds": round(slowest, 2),
                "median_writer_seconds": round(sorted(r[2] for r in regs)[len(regs) // 2], 2),
                "tag_count_per_version": len(store.get_version(NAME, 1).tags),
                "summary_kept": bool(store._ops.get_registered_model(NAME).tags.get("ar.summary")),
            }  # fmt: skip
            print(json.dumps(registration, indent=2), flush=True)
            locked = promotion_round(ctx, store, "team_bench_locked", args.writers, True, work)
            print(json.dumps(locked, indent=2), flush=True)
            unlocked = promotion_round(ctx, store, "team_bench_unlocked", args.writers, False, work)
            print(json.dumps(unlocked, indent=2), flush=True)
        finally:
            stack.down()
            os.chdir(ROOT)
    report = {
        "stack_up_seconds": round(up_s, 1), "registration": registration, "promotion_locked": locked,
        "promotion_unlocked": unlocked, "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, Python {sys.version.split()[0]}",
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "team_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    r, a, b = registration, locked, unlocked
    lines = [
        f"# Team registry: {args.writers} writers at once on mlflow server + PostgreSQL (basic-auth)", "",
        f"{report['machine']}; whole run {report['wall_seconds']} s (stack up {report['stack_up_seconds']} s); "
        f"load average at the end {report['load_average_at_end']}. `benchmarks/team_bench.py`.", "",
        f"## {args.writers} processes registering versions of one adapter at once", "",
        "`AdapterStore.register_adapter` from each process (see the script's docstring for why not `kedro run`).", "",
        "| figure | value |", "|---|---|",
        f"| versions registered / expected | {r['versions_registered']} / {r['versions_expected']} |",
        f"| distinct version numbers 1..{args.writers} | {'yes' if r['distinct_numbers'] else 'NO'} |",
        f"| artifacts pulled back, every sha256 verified | {r['artifacts_sha256_verified']} / {args.writers} |",
        f"| lineage tags complete | {r['lineage_complete']} / {args.writers} |",
        f"| `candidate` on the newest version | {'yes' if r['candidate_is_newest'] else 'NO'} |",
        f"| errors | {len(r['errors'])} |",
        f"| wall time, slowest writer (median) | {r['slowest_writer_seconds']} s ({r['median_writer_seconds']} s) |", "",
        f"## {args.writers} processes promoting and rolling back one adapter at once", "",
        "| figure | writer lock on | lock off (before) |", "|---|---|---|",
        f"| audit events / expected | {a['events']} / {a['events_expected']} | {b['events']} / {b['events_expected']} |",
        f"| forks (a sequence number written twice) | {a['forks']} | {b['forks']} |",
        f"| hash chain intact | {'yes' if a['chain_intact'] else 'NO'} | {'yes' if b['chain_intact'] else 'NO'} |",
        f"| production holder = what the last event says | {'yes' if a['holder_matches_last_event'] else 'NO'} | "
        f"{'yes' if b['holder_matches_last_event'] else 'NO'} |",
        f"| refused before any event (already held) | {a['refused_before_any_event']} | {b['refused_before_any_event']} |",
        f"| errors | {len(a['errors'])} | {len(b['errors'])} |",
        f"| wall time, slowest writer | {a['slowest_writer_seconds']} s | {b['slowest_writer_seconds']} s |", "",
        f"Operations, one per writer: {', '.join(a['ops'])}.",
    ]  # fmt: skip
    (RESULTS / "team_bench.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
