"""Registry operations at 10,000 adapter versions (500 adapters × 20 versions) in a fresh sqlite registry.

Run: ``.venv/bin/python benchmarks/registry_bench.py [--models 500] [--versions 20]``; writes
``benchmarks/results/registry_bench.{json,md}``. Goal: every timed operation under 1 s.

Loading: one real adapter is registered through ``AdapterStore.register_adapter`` (real run, artifacts,
checksums); the other 9,999 versions are bulk-inserted into MLflow's own registry tables (same ORM tables,
realistic tags: lineage, data md5s, base fingerprints, metrics, stages and aliases) because creating them one
by one through the MLflow client takes far longer than the 5-minute budget on 2 cores. Only the *loading* takes
that shortcut: every timed operation goes through ``AdapterStore`` / the CLI's code path.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapter_registry.environment import offline_defaults

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BASES = [("smollm2-135m-instruct", "LlamaForCausalLM"), ("all-minilm-l6-v2", "BertModel"),
         ("acme/llama-1b", "LlamaForCausalLM"), ("acme/llama-3b", "LlamaForCausalLM"),
         ("/models/qwen-0.5b", "Qwen2ForCausalLM")]  # fmt: skip


def tiny_adapter(folder: Path) -> Path:
    """A real (tiny) peft LoRA folder for the template registration."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))  # fmt: skip
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    (folder / "README.md").write_text("# bench adapter\n")
    return folder


def version_tags(model: int, version: int, rng: random.Random) -> dict[str, str]:
    from adapter_registry.registry.entities import Tag

    base_id, arch = BASES[model % len(BASES)]
    em = round(rng.uniform(0.6, 0.98), 4)
    tags = {
        Tag.RECIPE_NAME: f"tenant_{model:03d}", Tag.RECIPE_HASH: f"{rng.getrandbits(256):064x}",
        Tag.TASK: "sequence_classification" if arch == "BertModel" else "causal_lm_sft",
        Tag.METHOD: "qlora" if model % 7 == 0 else "lora", Tag.METHOD_FAMILY: "reparameterisation",
        Tag.PEFT_CONFIG: json.dumps({"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                                     "lora_dropout": 0.05, "bias": "none", "task_type": "CAUSAL_LM"}),
        Tag.TRAINING: json.dumps({"epochs": 3, "batch_size": 8, "learning_rate": 2e-4, "seed": version}),
        Tag.TRAINABLE_PARAMS: "921600", Tag.TOTAL_PARAMS: "135436608", Tag.TRAINABLE_SHARE: "0.0068",
        Tag.BASE_ID: base_id, Tag.BASE_REVISION: "", Tag.BASE_FINGERPRINT: f"sha256:{model % len(BASES):064x}",
        Tag.BASE_ARCHITECTURE: arch,
        Tag.BASE_SHAPES: json.dumps({"vocab_size": 49152, "hidden_size": 576, "num_layers": 30, "model_type": "llama"}),
        Tag.GIT_COMMIT: f"{rng.getrandbits(160):040x}", Tag.GIT_DIRTY: "false",
        Tag.DATA_VALIDATION: json.dumps({"success": True, "statistics": {"evaluated_expectations": 9, "successful_expectations": 9}}),
        Tag.GATES: json.dumps(["exact_match >= 0.8"]),
        Tag.metric("exact_match"): str(em), Tag.metric("exact_match_ci_low"): str(em - 0.04),
        Tag.metric("exact_match_ci_high"): str(min(em + 0.04, 1)), Tag.metric("loss"): str(round(rng.uniform(0.2, 1), 4)),
        Tag.metric("beats_base"): "1.0", Tag.metric("base.exact_match"): "0.1", Tag.metric("base.loss"): "3.1",
        Tag.library("peft"): "0.21.2", Tag.library("transformers"): "5.23.0", Tag.library("torch"): "2.13.0",
    }  # fmt: skip
    for split in ("train", "validation", "test"):
        tags[Tag.data_path(split)] = f"data/03_primary/tenant_{model:03d}/{split}.jsonl"
        tags[Tag.data_md5(split)] = f"{model:05d}{version:03d}{split[:2]}".ljust(32, "0")
        tags[Tag.data_commit(split)] = f"{rng.getrandbits(160):040x}"
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md"):
        tags[Tag.sha256(name)] = f"{rng.getrandbits(256):064x}"
    return tags


def stage_of(version: int, versions: int) -> str:
    return {versions - 2: "production", versions - 1: "staging", versions: "candidate"}.get(
        version, "archived"
    )


def bulk_load(db: Path, models: int, versions: int, template: Any) -> None:
    """Insert models × versions into MLflow's registry tables (loading shortcut; see the module docstring)."""
    import sqlalchemy as sa
    from mlflow.store.model_registry.dbmodels.models import (
        SqlModelVersion,
        SqlModelVersionTag,
        SqlRegisteredModel,
        SqlRegisteredModelAlias,
    )

    from adapter_registry.registry.entities import Tag

    rng = random.Random(0)
    now = int(time.time() * 1000)
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        for m in range(models):
            name = f"tenant_{m:03d}"
            if m:
                conn.execute(sa.insert(SqlRegisteredModel.__table__), [{"name": name, "creation_time": now}])
            rows, tag_rows, alias_rows = [], [], []
            for v in range(1, versions + 1):
                if m == 0 and v == 1:
                    continue  # the real registration
                created = now - (models * versions - m * versions - v) * 60_000
                rows.append({"name": name, "version": v, "creation_time": created, "last_updated_time": created,
                             "source": template.source, "run_id": template.run_id, "current_stage": "None",
                             "status": "READY", "description": ""})  # fmt: skip
                tags = {
                    **version_tags(m, v, rng),
                    **{
                        Tag.sha256(path): digest for path, digest in template.checksums.items()
                    },  # promote checks
                    Tag.STAGE: stage_of(v, versions),
                    Tag.RUN_ID: template.run_id,
                }
                tag_rows += [{"name": name, "version": v, "key": k, "value": val} for k, val in tags.items()]
            for v in range(versions - 2, versions + 1):
                alias_rows.append({"name": name, "alias": stage_of(v, versions), "version": v})
            if m == 0:
                conn.execute(sa.delete(SqlRegisteredModelAlias.__table__).where(
                    SqlRegisteredModelAlias.__table__.c.name == name))  # fmt: skip
            conn.execute(sa.insert(SqlModelVersion.__table__), rows)
            conn.execute(sa.insert(SqlModelVersionTag.__table__), tag_rows)
            conn.execute(sa.insert(SqlRegisteredModelAlias.__table__), alias_rows)


def timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Median wall seconds over ``repeat`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--versions", type=int, default=20)
    args = parser.parse_args()
    offline_defaults()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from adapter_registry.registry import lineage, promotion
    from adapter_registry.registry.policy import PromotionPolicy
    from adapter_registry.registry.promotion import Actor
    from adapter_registry.registry.store import AdapterStore

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.chdir(work)
        db = work / "mlflow.db"
        store = AdapterStore(f"sqlite:///{db}")
        template = store.register_adapter("tenant_000", tiny_adapter(work / "adapter"),
                                          {k: v for k, v in version_tags(0, 1, random.Random(1)).items()
                                           if not k.startswith(("ar.metric.", "ar.sha256."))},
                                          {"exact_match": 0.9, "beats_base": 1.0})  # fmt: skip
        load_start = time.perf_counter()
        bulk_load(db, args.models, args.versions, template)
        load_s = time.perf_counter() - load_start
        total = args.models * args.versions
        mid = f"tenant_{args.models // 2:03d}"
        md5 = f"{args.models // 2:05d}{5:03d}tr".ljust(32, "0")
        policy, actor = PromotionPolicy(enforce="never"), Actor("bench", False)
        ops: list[tuple[str, Callable[[], Any], Callable[[Any], int]]] = [
            ("list (all versions)", lambda: store.list_versions(summary=True), len),
            ("list --stage production", lambda: store.list_versions(stage="production", summary=True), len),
            ("list --base-model ID", lambda: store.list_versions(base_model=BASES[1][0], summary=True), len),
            ("list, every tag loaded (not the CLI's path)", lambda: store.list_versions(), len),
            ("show NAME/VERSION", lambda: store.resolve(f"{mid}/7"), lambda r: 1),
            ("show NAME@production", lambda: store.resolve(f"{mid}@production"), lambda r: 1),
            ("lineage NAME/VERSION", lambda: lineage.lineage_of(store, f"{mid}/7"), lambda r: 1),
            ("reverse lineage --dataset PATH@MD5",
             lambda: lineage.versions_from_dataset(store, f"data/03_primary/{mid}/train.jsonl@{md5}"), len),
            ("reverse lineage --md5 MD5", lambda: lineage.versions_from_md5(store, md5), len),
            ("reverse lineage --base-model FINGERPRINT",
             lambda: lineage.versions_from_base(store, f"sha256:{2:064x}"), len),
        ]  # fmt: skip
        rows = []
        for name, fn, count in ops:
            seconds, result = timed(fn)
            rows.append({"operation": name, "seconds": round(seconds, 4), "results": count(result)})
            print(f"{name:45s} {seconds:8.3f} s  ({count(result)} results)", flush=True)
        promote_times = []
        for m in range(3):  # candidate -> staging (archives the old staging version, appends an audit run)
            start = time.perf_counter()
            promotion.promote(
                store,
                f"tenant_{m + 10:03d}@candidate",
                "staging",
                policy=policy,
                actor=actor,
                force=True,
                reason="benchmark",
            )
            promote_times.append(time.perf_counter() - start)
        rows.append({"operation": "promote NAME@candidate --to staging",
                     "seconds": round(statistics.median(promote_times), 4), "results": 1})  # fmt: skip
        print(f"{'promote':45s} {statistics.median(promote_times):8.3f} s", flush=True)

    report = {
        "versions": total, "models": args.models, "bulk_load_seconds": round(load_s, 1),
        "wall_seconds": round(time.perf_counter() - started, 1), "goal_seconds": 1.0,
        "all_under_goal": all(r["seconds"] < 1.0 for r in rows), "operations": rows,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, Python {sys.version.split()[0]}",
        "backend": "sqlite (fresh), MLflow search_model_versions via AdapterStore",
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "registry_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Registry benchmark: {total:,} versions ({args.models} adapters × {args.versions})", "",
        f"Fresh sqlite registry; bulk load {load_s:.1f} s; whole run {report['wall_seconds']} s; {report['machine']}.",
        "Median of 3 calls through `AdapterStore` (the CLI's code path, without process start-up). Goal: < 1 s.", "",
        "| operation | seconds | results | < 1 s |", "|---|---:|---:|:---:|",
        *[f"| {r['operation']} | {r['seconds']:.3f} | {r['results']} | {'yes' if r['seconds'] < 1 else 'NO'} |" for r in rows],
    ]  # fmt: skip
    (RESULTS / "registry_bench.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
