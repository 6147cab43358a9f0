"""Dataset files and formats → training examples: the contract the pipeline calls.

A record's prompt is rendered by ``contract.render_prompt`` (the chat template by ``contract.chat_prompt``), the
one rendering that evaluation's test rows and ``serve``'s requests share.

``read_records`` reads ``.jsonl``, ``.csv`` or ``.parquet`` into a list of dicts; ``to_sft_examples`` and
``to_classification_examples`` turn records of a recipe's ``data.format`` into examples. Every problem is a
:class:`DataError` whose message starts with the file and the line (parse errors) or row (field errors,
1-based, header not counted) and says what to fix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from adapter_registry.contract import chat_problem, chat_prompt, render_prompt

SftFormat = Literal["alpaca", "chat", "completion", "text"]
SFT_FIELDS: dict[str, tuple[str, ...]] = {
    "completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
    "chat": ("messages",),
}


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file, the line or row, and the fix."""


def _where(source: str, row: int) -> str:
    return f"{source} row {row}" if source else f"row {row}"


# ------------------------------------------------------------------------------------------------ reading
def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path} line {line}: not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start}); "
            "re-save the file as UTF-8"
        ) from None


def _read_jsonl(path: Path, text: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {number}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(value, dict):
            raise DataError(
                f"{path} line {number}: expected a JSON object per line, got {type(value).__name__}"
            )
        records.append(value)
    return records


def _none_for_nan(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``.jsonl``, ``.csv`` or ``.parquet`` file as dicts (missing CSV cells become ``None``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; run `dvc pull` or `dvc repro`, or fix the path in the recipe"
        )
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv", ".parquet"):
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .csv or .parquet")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(
            f"{path}: file is empty; regenerate it (`dvc repro`) or point the recipe at real data"
        )
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            records = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a bad file
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    elif suffix == ".jsonl":
        records = _read_jsonl(path, _decode(path, raw))
    else:
        import io

        import pandas as pd

        text = _decode(path, raw)
        try:
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, ValueError) as e:
            raise DataError(f"{path}: not a readable CSV file ({e})") from None
        records = [{k: _none_for_nan(v) for k, v in row.items()} for row in frame.to_dict("records")]
    if not records:
        raise DataError(f"{path}: no rows; the file holds only a header or blank lines")
    return records


# ------------------------------------------------------------------------------------------------ examples
@dataclass(frozen=True)
class SftExample:
    """A training text as ordered segments; the loss is on the segments whose flag is True."""

    segments: tuple[tuple[str, bool], ...]
    system: str | None = None  # chat: the conversation's system turn, if it has one

    @property
    def prompt(self) -> str:
        """All text before the last target segment (what generation starts from)."""
        last = max(i for i, (_, target) in enumerate(self.segments) if target)
        return "".join(text for text, _ in self.segments[:last])

    @property
    def answer(self) -> str:
        """The last target segment (what the model should generate)."""
        return next(text for text, target in reversed(self.segments) if target)

    @property
    def text(self) -> str:
        """The whole example as one string."""
        return "".join(text for text, _ in self.segments)


@dataclass(frozen=True)
class ClassificationExample:
    """One text and its label."""

    text: str
    label: str


def _string(record: dict[str, Any], field: str, where: str, *, allow_empty: bool = False) -> str:
    if field not in record:
        present = ", ".join(sorted(record)) or "none"
        raise DataError(f"{where}: missing field {field!r} (fields present: {present})")
    value = record[field]
    if value is None:
        raise DataError(f"{where}: field {field!r} is null; fill it or drop the row")
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} must be a string, got {type(value).__name__} {value!r}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: field {field!r} is empty; fill it or drop the row")
    return value


def _chat_segments(
    messages: list[dict[str, str]], tokenizer: Any, where: str
) -> tuple[tuple[str, bool], ...]:
    """Render with the tokenizer's chat template; each assistant turn's rendered text is a target segment."""

    def render(upto: int, generation_prompt: bool) -> str:
        if generation_prompt:  # what the model is asked: the serving contract renders a chat request this way
            return chat_prompt(messages[:upto], tokenizer)
        return str(
            tokenizer.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=False)
        )

    segments: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, after = render(i, True), render(i + 1, False)
        if not before.startswith(done) or not after.startswith(before):
            raise DataError(
                f"{where}: the chat template does not render turns as a growing prefix; "
                "use a template whose output for fewer turns is a prefix of the full chat"
            )
        if before != done:
            segments.append((before[len(done) :], False))
        segments.append((after[len(before) :], True))
        done = after
    full = render(len(messages), False)
    if full.startswith(done) and full != done:
        segments.append((full[len(done) :], False))
    return tuple(segments)


def to_sft_examples(
    records: Sequence[dict[str, Any]],
    fmt: str,
    *,
    prompt_template: str,
    tokenizer: Any = None,
    source: str = "",
) -> list[SftExample]:
    """Records of ``fmt`` (completion, alpaca, text or chat) → examples; ``source`` names the file in errors."""
    if fmt not in SFT_FIELDS:
        raise DataError(
            f"{source or 'dataset'}: format {fmt!r} is not an SFT format; use {', '.join(SFT_FIELDS)}"
        )
    if fmt == "chat" and (tokenizer is None or not getattr(tokenizer, "chat_template", None)):
        raise DataError(
            f"{source or 'dataset'}: format 'chat' needs a tokenizer with a chat template "
            "(the base model's); use format 'completion' for a base without one"
        )
    examples: list[SftExample] = []
    for row, record in enumerate(records, start=1):
        where = _where(source, row)
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object, got {type(record).__name__}")
        if fmt == "completion":
            prompt = render_prompt(
                "completion", prompt_template, {"prompt": _string(record, "prompt", where)}
            )
            segments: tuple[tuple[str, bool], ...] = (
                (prompt, False),
                (_string(record, "completion", where), True),
            )
        elif fmt == "alpaca":
            instruction = _string(record, "instruction", where)
            extra = record.get("input") or ""
            if not isinstance(extra, str):
                raise DataError(f"{where}: field 'input' must be a string, got {type(extra).__name__}")
            prompt = render_prompt("alpaca", prompt_template, {"instruction": instruction, "input": extra})
            segments = ((prompt, False), (_string(record, "output", where), True))
        elif fmt == "text":
            segments = ((_string(record, "text", where), True),)
        else:
            if "messages" not in record or record["messages"] is None:
                raise DataError(f"{where}: missing field 'messages' (a list of {{role, content}} objects)")
            problem = chat_problem(record["messages"])
            if problem:
                raise DataError(f"{where}: {problem}")
            segments = _chat_segments(record["messages"], tokenizer, where)
            first = record["messages"][0]
            examples.append(SftExample(segments, first["content"] if first["role"] == "system" else None))
            continue
        examples.append(SftExample(segments))
    return examples


def to_classification_examples(
    records: Sequence[dict[str, Any]],
    *,
    text_column: str = "text",
    label_column: str = "label",
    source: str = "",
) -> list[ClassificationExample]:
    """Records → (text, label) examples; integer labels become strings; ``source`` names the file in errors."""
    examples: list[ClassificationExample] = []
    for row, record in enumerate(records, start=1):
        where = _where(source, row)
        text = _string(record, text_column, where)
        if label_column not in record:
            raise DataError(
                f"{where}: missing field {label_column!r} (fields present: {', '.join(sorted(record))})"
            )
        label = record[label_column]
        if label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(f"{where}: field {label_column!r} is null or empty; label the row or drop it")
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise DataError(f"{where}: field {label_column!r} must be a string or integer, got {label!r}")
        examples.append(ClassificationExample(text, str(label)))
    return examples


def load_split(
    path: str | Path,
    fmt: str,
    *,
    prompt_template: str = "{prompt}",
    tokenizer: Any = None,
    text_column: str = "text",
    label_column: str = "label",
) -> list[SftExample] | list[ClassificationExample]:
    """``read_records`` then the right ``to_*_examples`` for ``fmt``; errors name ``path``."""
    records = read_records(path)
    if fmt == "classification":
        return to_classification_examples(
            records, text_column=text_column, label_column=label_column, source=str(path)
        )
    return to_sft_examples(
        records, fmt, prompt_template=prompt_template, tokenizer=tokenizer, source=str(path)
    )
