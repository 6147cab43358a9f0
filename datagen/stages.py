"""The ``clean`` and ``split`` stages of dvc.yaml.

- clean: collapse whitespace in every text field, drop rows with an empty field, drop repeated requests
  (the same text after :func:`~adapter_registry.data.normalise.normalise_text`, the form the GX leakage check
  compares; the first one wins).
- split: seeded and stratified by category, with exact row counts for validation and test; since clean
  removed repeats, no (normalised) text lands in two splits.

Run: ``python -m datagen.stages clean data/01_raw/x.jsonl data/02_intermediate/x.jsonl``
and ``python -m datagen.stages split data/02_intermediate/x.jsonl data/05_model_input/x
--validation-rows 100 --test-rows 200 --seed 0``.
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from adapter_registry.data.normalise import normalise_text
from datagen.jsonl import read_jsonl, write_jsonl

SPLITS = ("train", "validation", "test")


def key_field(row: dict[str, Any]) -> str:
    """The field that identifies a request: ``prompt`` (completion rows) or ``text`` (classification rows)."""
    return "prompt" if "prompt" in row else "text"


def category(row: dict[str, Any]) -> str:
    """The stratum of a row: its label, or the text of its completion before ``" | "``."""
    if "label" in row:
        return str(row["label"])
    return str(row["completion"]).split(" | ", 1)[0]


def clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Whitespace collapsed, empty rows dropped, repeated requests dropped (first kept); order preserved."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in rows:
        tidy = {k: " ".join(v.split()) if isinstance(v, str) else v for k, v in row.items()}
        if any(v is None or v == "" for v in tidy.values()):
            continue
        key = normalise_text(str(tidy[key_field(tidy)]))
        if key in seen:
            continue
        seen.add(key)
        out.append(tidy)
    return out


def _allocate(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` over the strata in proportion to their sizes (largest remainder, ties by name)."""
    n = sum(sizes.values())
    exact = {k: sizes[k] * total / n for k in sizes}
    counts = {k: int(v) for k, v in exact.items()}
    leftover = total - sum(counts.values())
    for k in sorted(sizes, key=lambda k: (counts[k] - exact[k], k))[:leftover]:
        counts[k] += 1
    return counts


def split(
    rows: list[dict[str, Any]], *, validation_rows: int, test_rows: int, seed: int
) -> dict[str, list[dict[str, Any]]]:
    """Stratified by :func:`category`, exact sizes for validation and test, the rest train; input order kept."""
    if validation_rows + test_rows >= len(rows):
        raise ValueError(f"{validation_rows=} + {test_rows=} leave no training rows out of {len(rows)}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[category(row)].append(i)
    sizes = {k: len(v) for k, v in sorted(groups.items())}
    n_test = _allocate(sizes, test_rows)
    n_val = _allocate(sizes, validation_rows)
    rng = random.Random(seed)
    assigned: dict[int, str] = {}
    for name in sorted(groups):
        idx = list(groups[name])
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            t, v = n_test[name], n_val[name]
            assigned[i] = "test" if j < t else "validation" if j < t + v else "train"
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for i, row in enumerate(rows):
        out[assigned[i]].append(row)
    keys = {s: {normalise_text(str(r[key_field(r)])) for r in out[s]} for s in SPLITS}
    assert not (
        keys["train"] & keys["test"]
        or keys["train"] & keys["validation"]
        or keys["validation"] & keys["test"]
    ), "run clean before split: a text is in two splits"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="clean or split a JSONL dataset")
    sub = parser.add_subparsers(dest="stage", required=True)
    c = sub.add_parser("clean", help="normalise whitespace, drop empties, deduplicate")
    c.add_argument("source", type=Path)
    c.add_argument("target", type=Path)
    s = sub.add_parser("split", help="seeded, stratified train/validation/test")
    s.add_argument("source", type=Path)
    s.add_argument("folder", type=Path)
    s.add_argument("--validation-rows", type=int, required=True)
    s.add_argument("--test-rows", type=int, required=True)
    s.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    rows = read_jsonl(args.source)
    if args.stage == "clean":
        kept = clean(rows)
        write_jsonl(kept, args.target)
        print(f"{args.target}: kept {len(kept)} of {len(rows)} rows")
    else:
        parts = split(rows, validation_rows=args.validation_rows, test_rows=args.test_rows, seed=args.seed)
        for name, part in parts.items():
            write_jsonl(part, args.folder / f"{name}.jsonl")
        print(f"{args.folder}: " + ", ".join(f"{k} {len(v)}" for k, v in parts.items()))


if __name__ == "__main__":
    main()
