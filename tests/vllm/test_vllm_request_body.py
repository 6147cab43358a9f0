"""The request body that asks vLLM what evaluation asked: the contract's prompt, budget, greedy decoding and closed
answer set as vLLM's structured-output choice (https://docs.vllm.ai/en/latest/features/structured_outputs/)."""

from __future__ import annotations

import re

import pytest
from vllm_helpers import CONTRACT

from adapter_registry.contract import ContractError, ServingContract
from adapter_registry.vllm.request_body import answer_regex, answer_text, request_body, structured_outputs

NAME = "acme_support_lora@sha256:" + "ab" * 32


def test_a_constrained_contract_becomes_vllms_structured_output() -> None:
    contract = ServingContract.from_dict(CONTRACT)
    path, body = request_body(contract, NAME, "The tent was dented on arrival")
    assert path == "/v1/completions"
    assert body == {
        "model": NAME,
        "prompt": "### Request:\nThe tent was dented on arrival\n### Answer:\n",
        "max_tokens": 8,
        "temperature": 0,
        "structured_outputs": {"regex": r"(refund|damaged_item|cancel_order)( \|[\s\S]*)?"},
    }
    # the language evaluation decodes in: a category, then the end or the separator and a free reply
    regex = re.compile(body["structured_outputs"]["regex"])
    for answer in ("damaged_item", "damaged_item | Free replacement arranged.", "refund |\nline two"):
        assert regex.fullmatch(answer)
    for answer in ("damaged", "refund Refund issued.", "other | x", " refund"):
        assert not regex.fullmatch(answer)

    _, category = request_body(contract, NAME, "x", free_reply=False)
    assert category["structured_outputs"] == {"choice": ["refund", "damaged_item", "cancel_order"]}
    _, legacy = request_body(contract, NAME, {"prompt": "x"}, legacy=True)
    assert (
        legacy["guided_regex"] == body["structured_outputs"]["regex"] and "structured_outputs" not in legacy
    )
    no_separator = ServingContract.from_dict({**CONTRACT, "answer_separator": ""})
    assert structured_outputs(no_separator) == {"choice": ["refund", "damaged_item", "cancel_order"]}


def test_answers_are_matched_literally() -> None:
    regex = re.compile(answer_regex(["a.b (x)", "c|d", "e+"], " / "))
    assert regex.fullmatch("a.b (x)") and regex.fullmatch("c|d / free") and regex.fullmatch("e+")
    assert not regex.fullmatch("aXb (x)") and not regex.fullmatch("c") and not regex.fullmatch("eee")


def test_greedy_chat_and_alpaca_contracts() -> None:
    chat = ServingContract(task="causal_lm_sft", format="chat", max_new_tokens=64)
    path, body = request_body(chat, NAME, "hello")
    assert path == "/v1/chat/completions"
    assert body == {"model": NAME, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 64,
                    "temperature": 0}  # fmt: skip
    assert structured_outputs(chat) is None
    alpaca = ServingContract(task="causal_lm_sft", format="alpaca", prompt_template="Q: {prompt}\nA:")
    _, body = request_body(alpaca, NAME, {"instruction": "Sum", "input": "1 2"})
    assert body["prompt"] == "Q: Sum\n\n1 2\nA:"


def test_a_bad_input_is_refused_by_the_contract() -> None:
    contract = ServingContract.from_dict(CONTRACT)
    with pytest.raises(
        ContractError, match=r"field\(s\) \['question'\] that the completion template does not use"
    ):
        request_body(contract, NAME, {"prompt": "x", "question": "y"})


def test_answer_text_reads_both_endpoints() -> None:
    assert answer_text({"choices": [{"text": "refund"}]}) == "refund"
    assert answer_text({"choices": [{"message": {"role": "assistant", "content": "hi"}}]}) == "hi"
