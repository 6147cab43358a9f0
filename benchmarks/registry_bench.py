"""Registry operations at 10,000 adapter versions (500 adapters × 20 versions), on a sqlite file and on the team
stack (mlflow server on PostgreSQL with basic-auth), timed as whole ``adapter-registry`` processes.

Run: ``.venv/bin/python benchmarks/registry_bench.py [--models 500] [--versions 20] [--backends sqlite,postgres]``;
writes ``benchmarks/results/registry_bench.{json,md}``. Goal: every command under 1 s for the whole process.

Loading: one real adapter is registered through ``AdapterStore.register_adapter`` (real run, artifacts,
checksums; over HTTP on the server); the other 9,999 versions are bulk-inserted into MLflow's own registry tables
(same ORM tables, realistic tags: lineage, data md5s, base fingerprints, metrics, stages and aliases, and each
adapter's version summary as the store writes it, ``registry.summary``) because creating them one by one through
MLflow takes far longer than the time budget on 2 cores; then each stage holder gets the audited promotion that
placed it, through ``AuditLog`` (signed by the server where it runs the auth app), as ``list`` checks every
holder against its trail. Only the *loading* takes a shortcut: every timed operation is the CLI (a fresh
process: ``time adapter-registry ...``), or ``AdapterStore`` in-process. ``--work DIR`` keeps the loaded
registries for the next run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapter_registry.environment import offline_defaults

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CLI = str(Path(sys.executable).parent / "adapter-registry")
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


def bulk_load(engine: Any, models: int, versions: int, template: Any) -> None:
    """Insert models × versions into MLflow's registry tables, each adapter's summary tags included (loading
    shortcut; see the module docstring). ``engine``: SQLAlchemy, on the sqlite file or the PostgreSQL database."""
    import sqlalchemy as sa
    from mlflow.store.model_registry.dbmodels.models import (
        SqlModelVersion,
        SqlModelVersionTag,
        SqlRegisteredModel,
        SqlRegisteredModelAlias,
        SqlRegisteredModelTag,
    )

    from adapter_registry.registry import summary
    from adapter_registry.registry.entities import AdapterVersion, Tag

    rng = random.Random(0)
    now = int(time.time() * 1000)
    template_tags = dict(template.tags)
    with engine.begin() as conn:
        for m in range(models):
            name = f"tenant_{m:03d}"
            if m:
                conn.execute(sa.insert(SqlRegisteredModel.__table__), [{"name": name, "creation_time": now,
                                                                        "last_updated_time": now}])  # fmt: skip
            rows, tag_rows, alias_rows, entries = [], [], [], []
            for v in range(1, versions + 1):
                created = now - (models * versions - m * versions - v) * 60_000
                if m == 0 and v == 1:  # the real registration
                    tags = template_tags
                    created = int(template.created.timestamp() * 1000)
                else:
                    rows.append({"name": name, "version": v, "creation_time": created, "last_updated_time": created,
                                 "source": template.source, "run_id": template.run_id, "current_stage": "None",
                                 "status": "READY", "description": ""})  # fmt: skip
                    tags = {
                        **version_tags(m, v, rng),
                        **{
                            Tag.sha256(path): digest for path, digest in template.checksums.items()
                        },  # promote checks
                        Tag.RUN_ID: template.run_id,
                    }
                    if stage_of(v, versions) == "archived":
                        tags[Tag.ARCHIVED] = "true"
                    tag_rows += [
                        {"name": name, "version": v, "key": k, "value": val} for k, val in tags.items()
                    ]
                aliases = [stage_of(v, versions)] if stage_of(v, versions) != "archived" else []
                entries.append(summary.entry_of(AdapterVersion.build(
                    name=name, version=v, tags=tags, run_id=template.run_id, source=template.source,
                    created_ms=created, aliases=aliases)))  # fmt: skip
            for v in range(versions - 2, versions + 1):
                alias_rows.append({"name": name, "alias": stage_of(v, versions), "version": v})
            if m == 0:
                aliases_t, tags_t = SqlRegisteredModelAlias.__table__, SqlRegisteredModelTag.__table__
                conn.execute(sa.delete(aliases_t).where(aliases_t.c.name == name))
                conn.execute(sa.delete(tags_t).where(tags_t.c.name == name, tags_t.c.key.like("ar.summary%")))
            conn.execute(sa.insert(SqlModelVersion.__table__), rows)
            conn.execute(sa.insert(SqlModelVersionTag.__table__), tag_rows)
            conn.execute(sa.insert(SqlRegisteredModelAlias.__table__), alias_rows)
            conn.execute(sa.insert(SqlRegisteredModelTag.__table__),
                         [{"name": name, "key": k, "value": val} for k, val in summary.encode(entries).items()])  # fmt: skip


def timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Median wall seconds over ``repeat`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def whole_process(args: list[str], env: dict[str, str], repeat: int = 3) -> tuple[float, float, int, str]:
    """Median wall seconds and CPU seconds (user + system) of ``adapter-registry ARGS`` as fresh processes, the
    exit code and the last stderr line."""
    walls, cpus, code, err = [], [], 0, ""
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        code, err = done.returncode, (done.stderr.strip().splitlines() or [""])[-1]
    return statistics.median(walls), statistics.median(cpus), code, err


def load(backend: str, work: Path, models: int, versions: int) -> tuple[Any, dict[str, str], Any, float]:
    """The loaded registry: (store, environment for the CLI, the stack or None, bulk-load seconds). A ``work``
    folder that a run with the same sizes loaded before (``--work``) is reused: bulk-load seconds None."""
    import sqlalchemy as sa

    from adapter_registry.registry.store import AdapterStore

    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    marker = work / "loaded.json"
    reuse = marker.is_file() and json.loads(marker.read_text()).get("sizes") == [models, versions]
    stack = None
    if backend == "sqlite":
        uri = f"sqlite:///{work / 'mlflow.db'}"
        engine_uri = uri
    else:
        from adapter_registry.stack import Stack, free_port

        declare_auth_app(work / "entry-points")
        stack = Stack(work / "stack")
        os.chmod(work, 0o711)  # as root, PostgreSQL runs as the postgres user, who must enter this folder
        stack.up(port=free_port(), workers=2)
        env.update(line.removeprefix("export ").split("=", 1) for line in stack.exports())
        os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")})
        uri = env["MLFLOW_TRACKING_URI"]
        secrets, state = stack.secrets(), stack.state()
        engine_uri = (f"postgresql+psycopg2://mlflow:{secrets['postgres_password']}@127.0.0.1:"
                      f"{state['postgres_port']}/mlflow")  # fmt: skip
    env["MLFLOW_TRACKING_URI"] = uri
    if reuse:
        state = json.loads(marker.read_text())
        if not state.get("audited"):  # loaded before the bench seeded audit events
            print(
                f"[{backend}] audit events written, refused: {seed_audit(AdapterStore(uri), models, versions)}"
            )
            marker.write_text(json.dumps({**state, "audited": True}))
        return AdapterStore(uri), env, stack, None
    store = AdapterStore(uri)
    template = store.register_adapter("tenant_000", tiny_adapter(work / "adapter"),
                                      {k: v for k, v in version_tags(0, 1, random.Random(1)).items()
                                       if not k.startswith(("ar.metric.", "ar.sha256."))},
                                      {"exact_match": 0.9, "beats_base": 1.0})  # fmt: skip
    start = time.perf_counter()
    bulk_load(sa.create_engine(engine_uri), models, versions, template)
    print(f"[{backend}] audit events written, refused: {seed_audit(AdapterStore(uri), models, versions)}")
    seconds = time.perf_counter() - start
    marker.write_text(json.dumps({"sizes": [models, versions], "promoted": 0, "audited": True}))
    return AdapterStore(uri), env, stack, seconds


def seed_audit(store: Any, models: int, versions: int) -> tuple[int, int]:
    """Give every bulk-loaded stage holder the audited promotion that placed it (a team's registry has one per
    holder, and ``list`` checks every holder against its trail): production, then staging, per adapter; signed by
    the server where it runs the auth app. (events written, refused: an alias a benchmark promotion moved)."""
    import datetime as dt
    from concurrent.futures import ThreadPoolExecutor

    from adapter_registry.checksums import files_digest
    from adapter_registry.registry.audit import AuditLog
    from adapter_registry.registry.entities import RegistryError, StageChange

    digest = files_digest(store.get_version("tenant_001", 1).checksums)
    log = AuditLog(store)

    def one(m: int) -> tuple[int, int]:
        done = refused = 0
        for stage, version in (("production", versions - 2), ("staging", versions - 1)):
            event = StageChange(model=f"tenant_{m:03d}", version=version, from_stage="staging" if stage ==
                                "production" else "candidate", to_stage=stage, who="bench",
                                when=dt.datetime.now(dt.UTC), reason="bench load", action="promote", digest=digest)  # fmt: skip
            try:
                log.append(event)
                done += 1
            except RegistryError:
                refused += 1
        return done, refused

    with ThreadPoolExecutor(max_workers=4 if log.signed else 1) as pool:
        counts = list(pool.map(one, range(models)))
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def declare_auth_app(folder: Path) -> None:
    """Make ``mlflow server --app-name adapter-registry`` find the auth app where the installed metadata predates
    its entry point (as tests/registry/conftest.py does): a ``*.dist-info`` declaring it, on PYTHONPATH."""
    from importlib.metadata import entry_points

    from adapter_registry.registry.auth_app import APP_NAME

    if APP_NAME in {e.name for e in entry_points(group="mlflow.app")}:
        return
    info = folder / "adapter_registry_auth_app-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: adapter-registry-auth-app\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        f"[mlflow.app]\n{APP_NAME} = adapter_registry.registry.auth_app:create_app\n"
    )
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    import importlib

    importlib.invalidate_caches()


def fresh_candidates(work: Path, count: int) -> list[str]:
    """``count`` adapters whose candidate no earlier promotion of this (possibly reused) registry moved."""
    marker = work / "loaded.json"
    state = json.loads(marker.read_text())
    first = int(state["promoted"]) + 1
    state["promoted"] = first - 1 + count
    marker.write_text(json.dumps(state))
    if state["promoted"] >= state["sizes"][0]:
        raise SystemExit(f"every adapter of {work} was promoted by earlier runs: remove the folder")
    return [f"tenant_{m:03d}" for m in range(first, first + count)]


def run_backend(backend: str, models: int, versions: int, work: Path) -> dict[str, Any]:
    from adapter_registry.registry import lineage, promotion
    from adapter_registry.registry.policy import Actor, PromotionPolicy

    store, env, stack, load_s = load(backend, work, models, versions)
    try:
        mid, seventh = f"tenant_{models // 2:03d}", min(7, versions)
        md5 = f"{models // 2:05d}{min(5, versions):03d}tr".ljust(32, "0")
        dataset = f"data/03_primary/{mid}/train.jsonl@{md5}"
        fingerprint = f"sha256:{2:064x}"
        ops: list[tuple[str, Callable[[], Any], Callable[[Any], int]]] = [
            ("list (all versions)", lambda: store.list_versions(summary=True), len),
            ("list --stage production", lambda: store.list_versions(stage="production", summary=True), len),
            ("list --base-model ID", lambda: store.list_versions(base_model=BASES[1][0], summary=True), len),
            ("show NAME/VERSION", lambda: store.resolve(f"{mid}/{seventh}"), lambda r: 1),
            ("show NAME@production", lambda: store.resolve(f"{mid}@production"), lambda r: 1),
            ("lineage NAME/VERSION", lambda: lineage.lineage_of(store, f"{mid}/{seventh}"), lambda r: 1),
            ("reverse lineage --dataset PATH@MD5", lambda: lineage.versions_from_dataset(store, dataset), len),
            ("reverse lineage --md5 MD5", lambda: lineage.versions_from_md5(store, md5), len),
            ("reverse lineage --base-model FINGERPRINT", lambda: lineage.versions_from_base(store, fingerprint), len),
        ]  # fmt: skip
        in_process = []
        for name, fn, count in ops:
            seconds, result = timed(fn)
            in_process.append({"operation": name, "seconds": round(seconds, 4), "results": count(result)})
            print(f"[{backend}] in-process {name:42s} {seconds:7.3f} s ({count(result)} results)", flush=True)
        policy, actor = PromotionPolicy(enforce="never"), Actor("bench", False)
        promote_s = []
        for adapter in fresh_candidates(
            work, 3
        ):  # candidate -> staging: archives the old staging one, audited
            start = time.perf_counter()
            promotion.promote(store, f"{adapter}@candidate", "staging", policy=policy, actor=actor,
                              force=True, reason="benchmark")  # fmt: skip
            promote_s.append(time.perf_counter() - start)
        in_process.append({"operation": "promote NAME@candidate --to staging",
                           "seconds": round(statistics.median(promote_s), 4), "results": 1})  # fmt: skip

        open_policy = work / "open_policy.yml"
        open_policy.write_text("enforce: never\n")
        commands: list[tuple[str, list[str]]] = [
            ("adapter-registry --help", ["--help"]),
            ("list", ["list"]),
            ("list --json", ["list", "--json"]),
            ("list --stage production", ["list", "--stage", "production"]),
            ("list --base-model ID", ["list", "--base-model", BASES[1][0]]),
            ("show NAME/VERSION", ["show", f"{mid}/{seventh}"]),
            ("show NAME@production", ["show", f"{mid}@production"]),
            ("lineage NAME/VERSION", ["lineage", f"{mid}/{seventh}"]),
            ("lineage --dataset PATH@MD5", ["lineage", "--dataset", dataset]),
            ("lineage --md5 MD5", ["lineage", "--md5", md5]),
            ("lineage --base-model FINGERPRINT", ["lineage", "--base-model", fingerprint]),
        ]
        cli_rows = []
        for label, args in commands:
            wall, cpu, code, err = whole_process(args, env)
            assert code == 0, f"{label}: exit {code}: {err}"
            cli_rows.append({"command": label, "wall_seconds": round(wall, 3), "cpu_seconds": round(cpu, 3)})
            print(f"[{backend}] process {label:42s} {wall:7.3f} s wall {cpu:6.3f} s cpu", flush=True)
        walls, cpus = [], []
        for adapter in fresh_candidates(work, 3):
            args = [
                "promote",
                f"{adapter}@candidate",
                "--to",
                "staging",
                "--force",
                "--reason",
                "bench",
                *(["--policy", str(open_policy)] if stack is None else []),
            ]  # a server's policy is its own
            wall, cpu, code, err = whole_process(args, env, repeat=1)
            assert code == 0, f"promote: exit {code}: {err}"
            walls.append(wall)
            cpus.append(cpu)
        cli_rows.append({"command": "promote NAME@candidate --to staging", "wall_seconds": round(statistics.median(walls), 3),
                         "cpu_seconds": round(statistics.median(cpus), 3)})  # fmt: skip
        print(f"[{backend}] process promote {statistics.median(walls):7.3f} s wall", flush=True)
        wall, cpu, _, _ = whole_process([], env, repeat=1)  # warm the cache for the reference below
        ref = []
        for _ in range(3):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import mlflow"], env=env, check=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            ref.append(
                (
                    time.perf_counter() - start,
                    after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
                )
            )
        return {"backend": backend, "bulk_load_seconds": None if load_s is None else round(load_s, 1), "in_process": in_process,
                "whole_process": cli_rows,
                "import_mlflow": {"wall_seconds": round(statistics.median(r[0] for r in ref), 3),
                                  "cpu_seconds": round(statistics.median(r[1] for r in ref), 3)}}  # fmt: skip
    finally:
        if stack is not None:
            stack.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--work", type=Path, help="keep the loaded registries in WORK/<backend> and reuse them on "
                        "the next run with the same sizes (the stack is stopped, its data kept)")  # fmt: skip
    parser.add_argument("--only-load", action="store_true", help="load (into --work) and stop: for profiling")
    args = parser.parse_args()
    offline_defaults()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    started = time.perf_counter()
    load_at_start = [round(x, 1) for x in os.getloadavg()]
    total = args.models * args.versions
    runs = []
    for backend in args.backends.split(","):
        with contextlib.ExitStack() as cleanup:
            if args.work is None:
                work = Path(
                    cleanup.enter_context(tempfile.TemporaryDirectory(prefix=f"registry-bench-{backend}-"))
                )
            else:
                work = (args.work / backend).absolute()
                work.mkdir(parents=True, exist_ok=True)
            os.chdir(work)
            if args.only_load:
                _, env, _stack, seconds = load(backend, work, args.models, args.versions)
                print(f"[{backend}] loaded in {seconds} s; MLFLOW_TRACKING_URI={env['MLFLOW_TRACKING_URI']}")
                continue
            runs.append(run_backend(backend, args.models, args.versions, work))
        os.chdir(ROOT)
    if args.only_load:
        return 0
    goal = 1.0
    report = {
        "versions": total, "models": args.models, "goal_seconds": goal,
        "wall_seconds": round(time.perf_counter() - started, 1), "runs": runs,
        "all_under_goal": all(r["wall_seconds"] < goal for run in runs for r in run["whole_process"]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, Python {sys.version.split()[0]}",
        "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "registry_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    names = {
        "sqlite": "sqlite file",
        "postgres": "mlflow server on PostgreSQL (team stack, basic-auth, over HTTP)",
    }
    lines = [
        f"# Registry benchmark: {total:,} versions ({args.models} adapters × {args.versions})", "",
        f"{report['machine']}; whole run {report['wall_seconds']} s; load average at the end "
        f"{report['load_average_at_end']}, at the start {report['load_average_at_start']} (a shared machine: wall "
        "times vary with it, CPU times less).",
        "Whole process: a fresh `adapter-registry ...` process each time (what `time adapter-registry ...` "
        "measures), median of 3 (promote: of 3 different adapters). Goal: < 1 s.", "",
    ]  # fmt: skip
    for run in runs:
        lines += [f"## {names.get(run['backend'], run['backend'])}", "",
                  (f"Bulk load {run['bulk_load_seconds']} s. " if run["bulk_load_seconds"] is not None
                   else "Registry loaded by an earlier run (`--work`). ") + "For reference, `python -c \"import mlflow\"` takes "
                  f"{run['import_mlflow']['wall_seconds']:.2f} s ({run['import_mlflow']['cpu_seconds']:.2f} s CPU); "
                  "no command below imports it."
                  + (" Listings read every adapter's summary through the auth app's listing route "
                     "(`registry.server_listing`: one request, ~0.1 s of server time at 500 adapters; MLflow's "
                     "`search_registered_models`, what a server without the app answers, takes ~2 s and 5.5 MB)."
                     if run["backend"] == "postgres" else ""), "",
                  "| command (whole process) | wall s | CPU s | < 1 s |", "|---|---:|---:|:---:|",
                  *[f"| `{r['command']}` | {r['wall_seconds']:.3f} | {r['cpu_seconds']:.3f} | "
                    f"{'yes' if r['wall_seconds'] < goal else 'NO'} |" for r in run["whole_process"]],
                  "", "| operation (in process, `AdapterStore`) | seconds | results |", "|---|---:|---:|",
                  *[f"| {r['operation']} | {r['seconds']:.3f} | {r['results']} |" for r in run["in_process"]], ""]  # fmt: skip
    (RESULTS / "registry_bench.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
