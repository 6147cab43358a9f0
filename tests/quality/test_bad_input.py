"""Bad input is refused before any model loads: missing columns, one class, unseen test labels, tiny budgets."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks import quality
from benchmarks.quality_data import BenchmarkInputError, load_labelled


def write_csv(
    path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "category")
) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def rows(labels: list[str], per_label: int) -> list[tuple[str, str]]:
    return [(f"message {i} about {label},\nsecond line", label) for label in labels for i in range(per_label)]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return (
        write_csv(tmp_path / "train.csv", rows(["card_arrival", "exchange_rate", "top_up"], 20)),
        write_csv(tmp_path / "test.csv", rows(["card_arrival", "exchange_rate", "top_up"], 3)),
    )


def test_good_pair_is_split_stratified_with_quoted_newlines(pair) -> None:
    data = load_labelled(*pair, label_column="category")
    assert data.labels == ["card_arrival", "exchange_rate", "top_up"]
    assert len(data.train) == 54 and len(data.validation) == 6 and len(data.test) == 9
    assert {e.label for e in data.validation} == set(data.labels)
    assert "\n" in data.train[0].text
    assert any("fewer than 10" in w or "< 500" in w for w in data.warnings)


def test_missing_label_column_names_the_columns_and_the_flag(pair) -> None:
    with pytest.raises(
        BenchmarkInputError, match=r"label column 'intent' does not exist.*'category'.*--label-column"
    ):
        load_labelled(*pair, label_column="intent")


def test_missing_text_column(pair) -> None:
    with pytest.raises(BenchmarkInputError, match=r"text column 'utterance' does not exist.*--text-column"):
        load_labelled(*pair, text_column="utterance", label_column="category")


def test_single_class_dataset(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", rows(["card_arrival"], 30))
    test = write_csv(tmp_path / "test.csv", rows(["card_arrival"], 3))
    with pytest.raises(BenchmarkInputError, match=r"single-class dataset.*'card_arrival'"):
        load_labelled(train, test, label_column="category")


def test_test_label_never_seen_in_training(tmp_path: Path, pair) -> None:
    test = write_csv(tmp_path / "test2.csv", rows(["card_arrival", "lost_card"], 2))
    with pytest.raises(
        BenchmarkInputError, match=r"1 test labels never seen in training \(2 rows\).*'lost_card'"
    ):
        load_labelled(pair[0], test, label_column="category")


def test_cli_refuses_bad_input_with_exit_code_2(pair, capsys) -> None:
    assert quality.main(["--train", str(pair[0]), "--test", str(pair[1]), "--label-column", "intent"]) == 2
    assert "label column 'intent' does not exist" in capsys.readouterr().err


def test_budget_below_one_epoch_is_an_error_for_classification_and_a_warning_for_sft(capsys) -> None:
    with pytest.raises(BenchmarkInputError, match=r"too small to finish one epoch.*--budget-minutes"):
        quality.check_budget("classification", epoch_s=900, budget_s=600, error=True)
    message = quality.check_budget("SFT", epoch_s=1800, budget_s=900, error=False)
    assert message is not None and "WARNING" in capsys.readouterr().out
    assert quality.check_budget("classification", epoch_s=300, budget_s=600, error=True) is None


def test_answers_keep_labels_distinct() -> None:
    assert quality.answers_for(["card_arrival", "top_up"]) == {
        "card_arrival": "card arrival",
        "top_up": "top up",
    }
    assert quality.answers_for(["a_b", "a b"]) == {"a_b": "a_b", "a b": "a b"}  # would collide: kept as given


def test_seeds_below_one_is_refused(pair, capsys) -> None:
    assert quality.main(["--train", str(pair[0]), "--test", str(pair[1]), "--seeds", "0"]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("stem", ["../quality", "a/b", ""])
def test_a_results_name_that_is_not_a_plain_stem_is_refused(pair, capsys, stem) -> None:
    with pytest.raises(SystemExit) as exit_info:
        quality.main(["--train", str(pair[0]), "--test", str(pair[1]), "--results", stem])
    assert exit_info.value.code == 2 and "must be a plain file stem" in capsys.readouterr().err


def test_goals_read_the_shipped_recipe_not_a_variant() -> None:
    def row(approach: str, accuracy: float) -> dict:
        return {"approach": approach, "scoring": "argmax", "accuracy": accuracy, "train_wall_s": 300.0}

    rows = {
        "probe": row("linear probe (frozen features)", 0.925),
        "mean": row(quality.RECIPE_ROW + ", mean of 3 seeds (93.5%, 93.3%, 93.4%)", 0.934),
        "variant": row(quality.RECIPE_ROW + " with method.r=64", 0.950),  # newer, but a proposed change
    }
    lines = quality.goals(rows)
    assert lines[0] == "default recipe >= 94.0% within 10 min: NOT MET (93.40% in 5.0 min)"
    assert lines[1] == ">= 1 point above the linear probe: NOT MET (+0.90 points)"
