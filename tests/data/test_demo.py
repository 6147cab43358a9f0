"""The demo generator and the clean/split stages: deterministic, and equal to what dvc.lock records."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest
import yaml

from adapter_registry.data.normalise import normalise_text
from datagen import demo, stages

ROOT = Path(__file__).resolve().parents[2]


def test_generate_is_deterministic_and_seeded() -> None:
    a = demo.generate("acme_support", 60, seed=3)
    assert a == demo.generate("acme_support", 60, seed=3)
    assert a != demo.generate("acme_support", 60, seed=4)
    assert all(
        r["completion"].split(" | ")[0] in {c.name for c in demo.DATASETS["acme_support"].categories}
        for r in a
    )


def test_unknown_dataset_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown demo dataset 'nope'; choose one of"):
        demo.generate("nope", 10, seed=0)


def test_clean_collapses_whitespace_drops_empties_and_repeats() -> None:
    rows = [
        {"text": "  Reset   my password ", "label": "a"},
        {"text": "reset my password!", "label": "b"},  # same text once normalised: dropped
        {"text": " ", "label": "a"},
        {"text": "printer\tjammed\n", "label": "c"},
    ]
    assert stages.clean(rows) == [
        {"text": "Reset my password", "label": "a"},
        {"text": "printer jammed", "label": "c"},
    ]


def test_split_is_stratified_exact_and_disjoint() -> None:
    rows = stages.clean(demo.generate("intent_routing", 400, seed=1))
    parts = stages.split(rows, validation_rows=40, test_rows=80, seed=0)
    assert {k: len(v) for k, v in parts.items()} == {"train": 280, "validation": 40, "test": 80}
    texts = {k: {normalise_text(r["text"]) for r in v} for k, v in parts.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]
    share = Counter(r["label"] for r in rows)
    test = Counter(r["label"] for r in parts["test"])
    assert all(abs(test[k] - share[k] * 80 / 400) < 1 for k in share)
    assert parts == stages.split(rows, validation_rows=40, test_rows=80, seed=0)


def test_split_refuses_to_leave_no_training_rows() -> None:
    with pytest.raises(ValueError, match="leave no training rows"):
        stages.split([{"text": "a", "label": "x"}] * 3, validation_rows=2, test_rows=1, seed=0)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_stages_rebuild_the_files_recorded_in_dvc_lock(tmp_path: Path) -> None:
    """What `dvc repro` would write on a fresh clone has the md5s committed in dvc.lock (one dataset)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    name = "acme_support"
    item = params["datasets"][name]
    raw, clean, folder = tmp_path / "raw.jsonl", tmp_path / "clean.jsonl", tmp_path / name
    demo.main(
        [
            "--dataset",
            name,
            "--rows",
            str(item["rows"]),
            "--seed",
            str(params["generate"]["seed"]),
            "--confusable-share",
            str(item["confusable_share"]),
            "--follow-up-share",
            str(item["follow_up_share"]),
            "--out",
            str(raw),
        ]
    )
    stages.main(["clean", str(raw), str(clean)])
    stages.main(
        [
            "split",
            str(clean),
            str(folder),
            "--validation-rows",
            str(item["validation_rows"]),
            "--test-rows",
            str(item["test_rows"]),
            "--seed",
            str(params["split"]["seed"]),
        ]
    )
    recorded = {o["path"]: o["md5"] for o in lock[f"split@{name}"]["outs"]}
    for split in ("train", "validation", "test"):
        assert _md5(folder / f"{split}.jsonl") == recorded[f"data/05_model_input/{name}/{split}.jsonl"]
    assert _md5(raw) == lock[f"generate@{name}"]["outs"][0]["md5"]
