"""The serving contract: one rendering shared by training, evaluation and serving, and clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapter_registry.contract import (
    ContractError,
    MissingField,
    ServingContract,
    contract_of,
)
from adapter_registry.data.formats import to_sft_examples

TEMPLATE = "### Request:\n{prompt}\n### Answer:\n"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


class ChatTokenizer:
    """The part of a tokenizer that chat rendering uses, with a real jinja chat template."""

    chat_template = CHAT_TEMPLATE

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):  # type: ignore[no-untyped-def]
        from jinja2 import Template

        return Template(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=add_generation_prompt)


def contract(fmt: str, **kw: object) -> ServingContract:
    return ServingContract(task="causal_lm_sft", format=fmt, prompt_template=TEMPLATE, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fmt", "record", "served_input", "system"),
    [
        ("completion", {"prompt": "my parcel never came", "completion": "delivery | On it."}, "my parcel never came", ""),
        ("alpaca", {"instruction": "Classify", "input": "parcel lost", "output": "delivery"},
         {"instruction": "Classify", "input": "parcel lost"}, ""),
        ("alpaca", {"instruction": "Classify: parcel lost", "output": "delivery"}, "Classify: parcel lost", ""),
        ("chat", {"messages": [{"role": "system", "content": "You are Acme support."},
                               {"role": "user", "content": "parcel lost"},
                               {"role": "assistant", "content": "delivery"}]}, "parcel lost", "You are Acme support."),
    ],
)  # fmt: skip
def test_a_served_input_is_rendered_as_training_rendered_the_same_record(
    fmt, record, served_input, system
) -> None:
    (example,) = to_sft_examples([record], fmt, prompt_template=TEMPLATE, tokenizer=ChatTokenizer())
    assert contract(fmt, system_message=system).render(served_input, ChatTokenizer()) == example.prompt
    assert example.system == (system or None)


def test_requests_that_do_not_fit_the_contract_are_refused_with_the_fix() -> None:
    completion = contract("completion")
    with pytest.raises(MissingField, match=r"needs field 'prompt' \(completion format") as info:
        completion.render({"text": "hi"})
    assert info.value.field == "prompt"
    with pytest.raises(ContractError, match=r"'input.prompt' is empty"):
        completion.render({"prompt": "  "})
    with pytest.raises(ContractError, match=r"'input' is empty"):
        completion.render(" ")
    with pytest.raises(ContractError, match=r"'input.prompt' must be a string, got int"):
        completion.render({"prompt": 3})
    with pytest.raises(
        ContractError, match=r"field\(s\) \['extra'\] that the completion template does not use"
    ):
        completion.render({"prompt": "hi", "extra": "x"})
    assert contract("alpaca").render({"instruction": "Do it", "input": None}) == TEMPLATE.replace(
        "{prompt}", "Do it"
    )
    with pytest.raises(ContractError, match="a text-format adapter continues free text"):
        contract("text").render("once upon a time")
    chat = contract("chat")
    with pytest.raises(ContractError, match="the chat must end with a user turn"):
        chat.render({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    with pytest.raises(ContractError, match="message 0 has role 'robot'"):
        chat.render({"messages": [{"role": "robot", "content": "hi"}]}, ChatTokenizer())


def test_the_contract_round_trips_and_a_folder_without_one_gets_a_stand_in(tmp_path: Path) -> None:
    written = contract("completion", decoding="constrained", answers=("refund", "delivery"), answer_separator=" | ",
                       max_new_tokens=24, max_prompt_tokens=96, base_quantization="nf4-dq")  # fmt: skip
    written.write(tmp_path)
    assert ServingContract.read(tmp_path) == written
    data = json.loads((tmp_path / "serving.json").read_text())
    assert data["fields"] == ["prompt"] and data["contract_version"] == 1

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    bare = contract_of(legacy)
    assert not bare.complete and bare.missing == ("prompt template", "decoding", "max_new_tokens")
    with pytest.raises(ContractError, match="registered without a serving contract"):
        bare.render("hi")
    (legacy / "answers.json").write_text(json.dumps({"answers": ["refund"], "separator": " | "}))
    answered = contract_of(legacy)
    assert (answered.decoding, answered.answers, answered.answer_separator) == (
        "constrained",
        ("refund",),
        " | ",
    )
    (tmp_path / "serving.json").write_text(json.dumps({**data, "contract_version": 9}))
    with pytest.raises(ContractError, match="contract_version 9 is not 1; upgrade adapter-registry"):
        ServingContract.read(tmp_path)
