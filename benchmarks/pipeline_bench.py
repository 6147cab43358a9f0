"""Train-node throughput against a bare torch + peft loop, and where a default `kedro run` spends its time.

    python benchmarks/pipeline_bench.py [--steps 20] [--recipe pipelines/acme_support_lora.yaml] [--threads N]

1. The bare loop: the recipe's base (SmolLM2-135M), LoRA r=16 all-linear, batch 8, the same tokenised rows in
   random batches padded to the longest row, AdamW, nothing else. The pipeline's loop: ``training.loop.train``
   on the same model, rows and steps (length-grouped batches, scheduler, clipping, no validation). Both
   report real (non-pad) tokens per second; the goal is pipeline >= 0.9x bare. The two run interleaved, best of
   ``--repeats``, so machine load hits both alike.
2. Per-node wall time of the last `kedro run` (``data/08_reporting/run_timings.json``, written by the hooks);
   the goal is that everything outside the train and evaluate nodes takes <= 10% of the run.

Results: benchmarks/results/pipeline_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from adapter_registry.environment import offline_defaults

offline_defaults()  # before training.models imports transformers

from adapter_registry.bases.resolve import resolve_base  # noqa: E402
from adapter_registry.data.formats import load_split  # noqa: E402
from adapter_registry.recipes import load_recipe  # noqa: E402
from adapter_registry.training.features import collate, sft_features  # noqa: E402
from adapter_registry.training.loop import LoopConfig, train  # noqa: E402
from adapter_registry.training.models import load_base_model, load_tokenizer  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def fresh_model(base_path: Path) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = load_base_model(base_path, "causal_lm_sft")
    return get_peft_model(
        model,
        LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )


def bare_loop(base_path: Path, features: list[dict], steps: int, batch: int, pad: int) -> float:
    """The textbook loop; returns real tokens per second."""
    model = fresh_model(base_path)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    rng = random.Random(0)
    tokens = 0
    start = time.perf_counter()
    for _ in range(steps):
        rows = rng.sample(features, batch)
        batch_tensors = collate(rows, pad)
        loss = model(**batch_tensors).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(batch_tensors["attention_mask"].sum())
    return tokens / (time.perf_counter() - start)


def pipeline_loop(base_path: Path, features: list[dict], steps: int, batch: int, pad: int) -> float:
    model = fresh_model(base_path)
    config = LoopConfig(
        max_steps=steps, batch_size=batch, learning_rate=1e-3, eval_every=10**9, checkpoint_every=10**9
    )
    result = train(model, features, [], config, pad)
    return result.tokens_per_s


def node_shares(path: Path) -> dict[str, object]:
    if not path.is_file():
        return {"missing": f"{path} not found: run `make run` (or `kedro run`) first"}
    timings = json.loads(path.read_text())
    nodes: dict[str, float] = timings["nodes"]
    core = sum(v for k, v in nodes.items() if k.endswith(("train_adapter_node", "evaluate_adapter_node")))
    total = timings["total_seconds"]
    return {
        "total_seconds": total,
        "train_and_evaluate_seconds": round(core, 1),
        "outside_share": round(1 - core / total, 4),
        "nodes": nodes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="pipelines/acme_support_lora.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--timings-only",
        action="store_true",
        help="keep the loop figures of the last results file; refresh the default run's timings",
    )
    args = parser.parse_args()
    if args.timings_only:
        result = json.loads((RESULTS / "pipeline_bench.json").read_text())
        result["default_run"] = node_shares(Path("data/08_reporting/run_timings.json"))
        write(result, args.recipe, args.steps, args.repeats)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    base = resolve_base(recipe.base)
    tokenizer = load_tokenizer(base.path)
    examples = load_split(
        recipe.data.train,
        recipe.data.format,
        prompt_template=getattr(recipe.task, "prompt_template", "{prompt}"),
    )
    features = sft_features(examples, tokenizer, recipe.training.max_length)
    batch, pad = recipe.training.batch_size, tokenizer.pad_token_id
    bare, ours = [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(base.path, features, args.steps, batch, pad))
        ours.append(pipeline_loop(base.path, features, args.steps, batch, pad))
    result = {
        "recipe": args.recipe,
        "steps": args.steps,
        "repeats": args.repeats,
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "bare_tokens_per_s": round(max(bare), 1),
        "pipeline_tokens_per_s": round(max(ours), 1),
        "ratio": round(max(ours) / max(bare), 3),
        "runs": {"bare": bare, "pipeline": ours},
        "default_run": node_shares(Path("data/08_reporting/run_timings.json")),
    }
    write(result, args.recipe, args.steps, args.repeats)


def write(result: dict, recipe: str, steps: int, repeats: int) -> None:
    """Print the tables and write benchmarks/results/pipeline_bench.{json,md}."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pipeline_bench.json").write_text(json.dumps(result, indent=2))
    run = result["default_run"]
    lines = [
        "# Pipeline benchmark",
        "",
        f"Train-node throughput, {recipe}, batch {result['batch_size']}, {result['steps']} steps, "
        f"best of {result.get('repeats', repeats)}, "
        f"{result['threads']} torch threads:",
        "",
        "| loop | tokens/s (real tokens) |",
        "|---|---|",
        f"| bare torch + peft | {result['bare_tokens_per_s']} |",
        f"| pipeline (training.loop.train) | {result['pipeline_tokens_per_s']} |",
        f"| ratio (goal >= 0.9) | {result['ratio']} |",
        "",
    ]
    if "nodes" in run:
        lines += [
            f"Default `kedro run`: {run['total_seconds']:.0f} s in all, train + evaluate "
            f"{run['train_and_evaluate_seconds']:.0f} s; outside them {100 * run['outside_share']:.1f}% "
            "(goal <= 10%).",
            "",
            "| node | seconds |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.1f} |" for k, v in sorted(run["nodes"].items())]
    (RESULTS / "pipeline_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
