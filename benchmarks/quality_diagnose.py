"""Why does the default classification recipe fall short? Variants of it, scored on the validation split only.

    python benchmarks/quality_diagnose.py --set training.early_stopping_patience=null
    python benchmarks/quality_diagnose.py --set training.epochs=3 --set training.eval_every=50

The test split is never read. Each variant trains on train minus the carved validation split (as the benchmark
does) and prints the restored model's validation accuracy (its head alone), the validation log-loss of the head
and of the best neighbour vote, the loop summary and the validation-loss curve.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.quality import BANKING77, default_recipe  # noqa: E402
from benchmarks.quality_data import load_labelled  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train", type=Path, default=BANKING77 / "train.csv")
    p.add_argument("--set", action="append", default=[], help="recipe key=value (YAML value)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--probe-cs", default="", help="C grid of the linear probe, e.g. 1,4,16,64,256,1024")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if (
        args.probe_cs
    ):  # the grid lives in code (heads.fit_linear_probe), not in the recipe: patch it for this run
        import functools

        import adapter_registry.training.adapter as adapter_module
        from adapter_registry.training.heads import fit_linear_probe

        cs = tuple(float(c) for c in args.probe_cs.split(","))
        adapter_module.fit_linear_probe = functools.partial(fit_linear_probe, cs=cs)  # type: ignore[assignment]
    from adapter_registry.bases.resolve import resolve_reference
    from adapter_registry.evaluation.evaluate import classifier_logits
    from adapter_registry.recipes import parse_recipe
    from adapter_registry.training.adapter import train_adapter
    from adapter_registry.training.features import classification_features

    data = load_labelled(args.train, args.train, label_column="category")  # test = train: never scored
    ns = argparse.Namespace(train=args.train, test=args.train, text_column="text", label_column="category")
    raw = default_recipe(ns, False).model_dump(mode="json")  # None values kept: patience null stays off
    for item in args.set:
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = yaml.safe_load(value)
    recipe = parse_recipe(raw)
    start = time.perf_counter()
    trained = train_adapter(recipe, resolve_reference("all-minilm-l6-v2"), data.train, data.validation)
    wall = time.perf_counter() - start
    index = {label: i for i, label in enumerate(trained.labels)}
    y = np.array([index[e.label] for e in data.validation])
    feats = classification_features([e.text for e in data.validation], y.tolist(), trained.tokenizer, 64)
    # the head alone: a neighbour vote holds the validation rows themselves once chosen (its validation
    # log-loss, scored before they joined, is printed below)
    vote, trained.model.neighbours = trained.model.neighbours, None
    acc = float(
        (classifier_logits(trained.model, feats, trained.tokenizer.pad_token_id).argmax(1) == y).mean()
    )
    print(
        json.dumps(
            {
                "set": args.set,
                "probe_cs": args.probe_cs,
                "probe_candidates": trained.probe.candidates if trained.probe else None,
                "validation_accuracy_head_alone": acc,
                "neighbour_vote": vote.settings() if vote is not None else None,
                "validation_log_loss_head": trained.neighbour_scores.get("head"),
                "validation_log_loss_best": min(trained.neighbour_scores.values(), default=None),
                "probe_validation_accuracy": trained.probe.validation_accuracy if trained.probe else None,
                "probe_C": trained.probe.C if trained.probe else None,
                "wall_s": round(wall),
                "loop": trained.result.summary(),
                "val_loss": [(s, round(v, 4)) for s, v in trained.result.val_loss],
            }
        )
    )


if __name__ == "__main__":
    main()
