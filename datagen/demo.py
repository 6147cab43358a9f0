"""A deterministic generator of the demo datasets (seeded, no network): the ``generate`` stage of dvc.yaml.

Three datasets, one per default recipe, each described by a table in ``datasets/<name>.yaml``:

- ``acme_support``: an online shop's support requests; ``completion`` is ``"<category> | <reply>"``.
- ``globex_support``: a telecom's support requests, its own categories and a terser reply style.
- ``intent_routing``: an employee help desk; ``{"text", "label"}`` rows for sequence classification.

Each category has many request templates with slot fills (``phrases.yaml``), greetings, sign-offs, typos and
casing variants, plus a share of deliberately confusable requests whose label is decided by what the customer
asks for (a refund vs. a return of a broken item) and of follow-ups that quote an earlier request of
another category before the real one, so the task is not trivial. The raw output also holds
what a real export holds (repeated rows, stray whitespace, empty requests) for the ``clean`` stage.

Run: ``python -m datagen.demo --dataset acme_support --rows 1100 --seed 7 --out data/01_raw/acme_support.jsonl``
"""

from __future__ import annotations

import argparse
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from adapter_registry.data.normalise import normalise_text
from datagen.jsonl import write_jsonl

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Category:
    """A label with the requests that mean it and the one-line replies it gets."""

    name: str
    requests: tuple[str, ...]
    replies: tuple[str, ...] = ()


@dataclass(frozen=True)
class DemoDataset:
    """One ``datasets/<name>.yaml``: its row format, categories, confusable requests and request prefixes."""

    format: str  # "completion" ({prompt, completion}) or "classification" ({text, label})
    categories: tuple[Category, ...]
    confusable: tuple[tuple[str, str], ...]  # (request template, category name)
    prefixes: tuple[str, ...] = ()


def _read_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return dict(yaml.safe_load(f))


def _load_dataset(path: Path) -> DemoDataset:
    table = _read_yaml(path)
    return DemoDataset(
        format=table["format"],
        categories=tuple(
            Category(name, tuple(c["requests"]), tuple(c.get("replies", ())))
            for name, c in table["categories"].items()
        ),
        confusable=tuple((c["request"], c["label"]) for c in table["confusable"]),
        prefixes=tuple(table.get("prefixes", ())),
    )


_PHRASES = _read_yaml(HERE / "phrases.yaml")
SLOTS: dict[str, tuple[str, ...]] = {name: tuple(options) for name, options in _PHRASES["slots"].items()}
GREETINGS: tuple[str, ...] = tuple(_PHRASES["greetings"])
SIGN_OFFS: tuple[str, ...] = tuple(_PHRASES["sign_offs"])
PIVOTS: tuple[str, ...] = tuple(_PHRASES["pivots"])
DATASETS: dict[str, DemoDataset] = {
    path.stem: _load_dataset(path) for path in sorted((HERE / "datasets").glob("*.yaml"))
}


def _fill(template: str, rng: random.Random) -> str:
    values = {name: rng.choice(options) for name, options in SLOTS.items()}
    values["order"] = f"#{rng.randint(10000, 99999)}"
    values["days"] = str(rng.randint(2, 14))
    values["months"] = str(rng.randint(2, 23))
    values["amount"] = f"${rng.randint(5, 240)}.{rng.randint(0, 99):02d}"
    values["ticket"] = f"INC{rng.randint(1000, 9999)}"
    return template.format(**values)


def _typo(text: str, rng: random.Random) -> str:
    """Swap two neighbouring letters, drop one or double one in a word of four letters or more."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    kind = rng.random()
    if kind < 0.5:
        w = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    elif kind < 0.8:
        w = w[:j] + w[j + 1 :]
    else:
        w = w[:j] + w[j] + w[j:]
    words[i] = w
    return " ".join(words)


def _dress(text: str, rng: random.Random, *, prefixes: tuple[str, ...] = ()) -> str:
    """Politeness, typos and casing: how people actually write to support."""
    if rng.random() < 0.15:
        text = _typo(text, rng)
    if rng.random() < 0.35:
        text = rng.choice(GREETINGS) + text
    if rng.random() < 0.3:
        text = text.rstrip("?!.") + rng.choice(SIGN_OFFS)
    if prefixes:
        text = _fill(rng.choice(prefixes), rng) + text
    if rng.random() < 0.25:
        return text.lower()
    return text[0].upper() + text[1:]


def _raw_noise(text: str, rng: random.Random) -> str:
    """What an export adds: stray spaces, tabs and trailing newlines (the clean stage removes them)."""
    roll = rng.random()
    if roll < 0.03:
        return "  " + text + " "
    if roll < 0.05:
        return text.replace(" ", "  ", 1)
    if roll < 0.06:
        return text + "\t\n"
    return text


def _pick(
    categories: tuple[Category, ...],
    confusable: tuple[tuple[str, str], ...],
    share: float,
    follow_up_share: float,
    rng: random.Random,
) -> tuple[str, Category]:
    """A template and its category: a plain request, a confusable one, or a follow-up.

    A follow-up quotes a request of another category, then pivots to the real one: the label is the
    request after the pivot (a bag of words mixes both; a model must read the order).
    """
    by_name = {c.name: c for c in categories}
    roll = rng.random()
    if roll < share:
        template, label = rng.choice(confusable)
        return template, by_name[label]
    category = rng.choice(categories)
    if roll < share + follow_up_share:
        earlier = rng.choice([c for c in categories if c is not category])
        first = rng.choice(earlier.requests).rstrip("?!.")
        return f"{first}. {rng.choice(PIVOTS)} {rng.choice(category.requests)}", category
    return rng.choice(category.requests), category


def generate(
    dataset: str,
    rows: int,
    seed: int,
    *,
    confusable_share: float = 0.15,
    follow_up_share: float = 0.12,
    duplicate_share: float = 0.03,
    empty_share: float = 0.01,
) -> list[dict[str, str]]:
    """``rows`` distinct requests (distinct after ``normalise_text``) plus raw-export noise, in a fixed order."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown demo dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    table = DATASETS[dataset]
    rng = random.Random(seed * 1_000_003 + zlib.crc32(dataset.encode()))
    seen: set[str] = set()
    out: list[dict[str, str]] = []
    attempts = 0
    while len(seen) < rows:
        attempts += 1
        if attempts > rows * 50:
            raise ValueError(
                f"{dataset}: templates give only {len(seen)} distinct requests; lower rows={rows}"
            )
        template, category = _pick(table.categories, table.confusable, confusable_share, follow_up_share, rng)
        text = _dress(_fill(template, rng), rng, prefixes=table.prefixes)
        key = normalise_text(text)
        if key in seen:
            continue
        seen.add(key)
        if table.format == "classification":
            row = {"text": _raw_noise(text, rng), "label": category.name}
        else:
            row = {
                "prompt": _raw_noise(text, rng),
                "completion": f"{category.name} | {rng.choice(category.replies)}",
            }
        out.append(row)
        if rng.random() < duplicate_share:
            out.append(dict(row))
        if rng.random() < empty_share:
            out.append({**row, ("text" if table.format == "classification" else "prompt"): " "})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--rows", type=int, required=True, help="distinct requests to generate")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--confusable-share", type=float, default=0.15)
    parser.add_argument("--follow-up-share", type=float, default=0.12)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = generate(
        args.dataset,
        args.rows,
        args.seed,
        confusable_share=args.confusable_share,
        follow_up_share=args.follow_up_share,
    )
    write_jsonl(rows, args.out)
    print(f"{args.out}: {len(rows)} raw rows")


if __name__ == "__main__":
    main()
