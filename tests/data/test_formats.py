"""Reading dataset files and turning records into examples; every bad input is a DataError naming file+line/row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapter_registry.data.formats import (
    ClassificationExample,
    DataError,
    load_split,
    read_records,
    to_classification_examples,
    to_sft_examples,
)

from .conftest import TEMPLATE, write_jsonl


def test_reads_jsonl_csv_and_parquet_alike(tmp_path: Path) -> None:
    import pandas as pd

    rows = [{"text": "hello", "label": "a"}, {"text": "bye", "label": "b"}]
    write_jsonl(tmp_path / "d.jsonl", rows)
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for suffix in ("jsonl", "csv", "parquet"):
        assert read_records(tmp_path / f"d.{suffix}") == rows


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found; run `dvc pull`"):
        read_records(tmp_path / "nope.jsonl")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match=r"e\.jsonl: file is empty"):
        read_records(tmp_path / "e.jsonl")


def test_header_only_csv(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text("text,label\n")
    with pytest.raises(DataError, match=r"h\.csv: no rows"):
        read_records(tmp_path / "h.csv")


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl line 2: not valid UTF-8 \(byte 0xe9"):
        read_records(tmp_path / "latin.jsonl")


def test_malformed_jsonl_line_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c",\n')
    with pytest.raises(DataError, match=r"bad\.jsonl line 3: not valid JSON \("):
        read_records(tmp_path / "bad.jsonl")


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    (tmp_path / "list.jsonl").write_text('{"text": "a"}\n["b"]\n')
    with pytest.raises(DataError, match=r"list\.jsonl line 2: expected a JSON object per line, got list"):
        read_records(tmp_path / "list.jsonl")


def test_unsupported_suffix(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        read_records(tmp_path / "d.txt")


def test_csv_empty_cell_is_null_and_named_with_row(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("text,label\nhello,a\nbye,\n")
    records = read_records(tmp_path / "d.csv")
    assert records[1] == {"text": "bye", "label": None}
    with pytest.raises(DataError, match=r"d\.csv row 2: field 'label' is null or empty"):
        load_split(tmp_path / "d.csv", "classification")


def test_completion_examples_put_the_loss_on_the_completion() -> None:
    [ex] = to_sft_examples(
        [{"prompt": "where is {it}", "completion": "order_status | soon"}],
        "completion",
        prompt_template=TEMPLATE,
    )
    assert ex.segments == (
        ("### Request:\nwhere is {it}\n### Answer:\n", False),
        ("order_status | soon", True),
    )
    assert ex.prompt == "### Request:\nwhere is {it}\n### Answer:\n" and ex.answer == "order_status | soon"


def test_alpaca_joins_instruction_and_input() -> None:
    records = [
        {"instruction": "Sum", "input": "1 2", "output": "3"},
        {"instruction": "Hi", "output": "Hello"},
    ]
    a, b = to_sft_examples(records, "alpaca", prompt_template="Q: {prompt}\nA: ")
    assert a.segments == (("Q: Sum\n\n1 2\nA: ", False), ("3", True))
    assert b.prompt == "Q: Hi\nA: "


def test_text_is_one_target_segment() -> None:
    [ex] = to_sft_examples([{"text": "raw text"}], "text", prompt_template=TEMPLATE)
    assert ex.segments == (("raw text", True),) and ex.prompt == ""


def test_chat_marks_assistant_turns_as_targets(tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao"},
    ]
    [ex] = to_sft_examples([{"messages": messages}], "chat", prompt_template=TEMPLATE, tokenizer=tokenizer)
    assert [t for t, target in ex.segments if target] == ["hello<|end|>\n", "ciao<|end|>\n"]
    assert ex.text == tokenizer.apply_chat_template(messages, tokenize=False)
    assert ex.answer == "ciao<|end|>\n" and ex.prompt.endswith("<|user|>bye<|end|>\n<|assistant|>")


def test_chat_roles_out_of_order(tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"},
    ]
    with pytest.raises(
        DataError, match=r"chat\.jsonl row 1: roles out of order: message 1 is 'user' where 'assistant'"
    ):
        to_sft_examples(
            [{"messages": messages}], "chat", prompt_template="", tokenizer=tokenizer, source="chat.jsonl"
        )


def test_chat_needs_a_chat_template() -> None:
    with pytest.raises(DataError, match="format 'chat' needs a tokenizer with a chat template"):
        to_sft_examples([], "chat", prompt_template="", tokenizer=None, source="c.jsonl")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "p"}, r"d\.jsonl row 2: missing field 'completion' \(fields present: prompt\)"),
        ({"prompt": None, "completion": "c"}, r"d\.jsonl row 2: field 'prompt' is null"),
        ({"prompt": "  ", "completion": "c"}, r"d\.jsonl row 2: field 'prompt' is empty"),
        ({"prompt": 3, "completion": "c"}, r"d\.jsonl row 2: field 'prompt' must be a string, got int"),
    ],
)
def test_bad_completion_records(record: dict[str, Any], message: str) -> None:
    good = {"prompt": "p", "completion": "c"}
    with pytest.raises(DataError, match=message):
        to_sft_examples([good, record], "completion", prompt_template=TEMPLATE, source="d.jsonl")


def test_classification_examples_and_missing_column() -> None:
    assert to_classification_examples([{"t": "x", "y": 3}], text_column="t", label_column="y") == [
        ClassificationExample("x", "3")
    ]
    with pytest.raises(DataError, match=r"c\.csv row 1: missing field 'label' \(fields present: text\)"):
        to_classification_examples([{"text": "x"}], source="c.csv")
