"""benchmarks/bare_lpft.py, the issue's LP-FT loop without project code, on a tiny CSV pair and the real MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bare_lpft

LABELS = ["card_arrival", "exchange_rate", "top_up"]


def write_csv(path: Path, labels: list[str], per_label: int) -> Path:
    lines = ["text,category"] + [
        f"message {i} about {label},{label}" for label in labels for i in range(per_label)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def pair(tmp_path: Path) -> list[str]:
    train = write_csv(tmp_path / "train.csv", LABELS, 12)
    test = write_csv(tmp_path / "test.csv", LABELS, 2)
    return ["--train", str(train), "--test", str(test), "--threads", "1"]


def test_one_epoch_writes_its_row_and_a_rerun_replaces_it(pair, tmp_path):
    results = tmp_path / "bare.json"
    args = [*pair, "--epochs", "1", "--results", str(results)]
    assert bare_lpft.main(args) == 0
    assert bare_lpft.main(args) == 0  # same settings and seed: the row is replaced, not repeated
    (row,) = json.loads(results.read_text())
    assert (row["train_rows"], row["test_rows"], row["seed"]) == (36, 6, 0)
    assert row["probe_accuracy"] == 1.0  # each text names its label: the frozen features separate them
    assert [e["epoch"] for e in row["epochs"]] == [1] and row["epochs"][0]["test_accuracy"] >= 2 / 3
    assert "raw features, probe C=1" in row["settings"] and "data " in row["settings"]
    assert f"| {row['settings']} | 0 | 100.00% |" in results.with_suffix(".md").read_text()


def test_a_missing_column_or_an_unseen_test_label_stops_before_training(pair, tmp_path):
    with pytest.raises(SystemExit, match=r"has no column \['intent'\]"):
        bare_lpft.main([*pair, "--label-column", "intent", "--results", str(tmp_path / "r.json")])
    write_csv(tmp_path / "test.csv", ["lost_card"], 2)
    with pytest.raises(SystemExit, match=r"test labels never seen in training: \['lost_card'\]"):
        bare_lpft.main([*pair, "--results", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()
