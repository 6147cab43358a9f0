"""The serving contract: what evaluation did to a request, saved with the adapter so that serving does the same.

An adapter answers well only when it is asked the way it was trained and scored: the same prompt template (or
the base's chat template), the same decoding (greedy, or constrained to a closed answer set with a free reply
after the separator), the same answer budget and the same stop rule. Those facts are part of the adapter, so
they travel in its folder as ``serving.json`` (sha256-checked with every other file when registered, pulled or
served):

- evaluation decodes the test split *through* the contract (``render`` the record, ``decoding``/``answers``,
  ``max_new_tokens``), so a score is a score of what the contract does;
- training renders its prompts with the same :func:`render_prompt`, so the contract is what was trained on;
- ``adapter-registry serve`` renders a request's ``input`` (the user's raw text, or the record's fields) with
  it and decodes with it: for the same input, the served answer is the evaluated one;
- the model card's loading snippet applies it too.

Ground floor: imports nothing else of ours (a tokenizer is passed in where the chat template needs one).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CONTRACT_FILE = "serving.json"
LEGACY_ANSWERS_FILE = "answers.json"  # what adapters registered before serving.json carried (answers only)
CONTRACT_VERSION = 1
DEFAULT_MAX_NEW_TOKENS = 32  # what a folder without a contract is served with

# How a base may be quantised when an adapter is trained and scored on it (QLoRA): bitsandbytes 4-bit NF4 or FP4,
# with or without double quantisation, or 8-bit. "" is full precision.
QUANTIZATIONS = ("nf4", "nf4-dq", "fp4", "fp4-dq", "int8")


def quantization_name(bits: int | None, quant_type: str = "nf4", double_quant: bool = False) -> str:
    """The name of a bitsandbytes quantisation as the contract records it ("" for none)."""
    if bits is None:
        return ""
    if bits == 8:
        return "int8"
    return f"{quant_type}-dq" if double_quant else quant_type


# The fields of one record of each data format; a request's ``input`` names the same ones (the first is what a
# plain string fills). ``input`` of alpaca is optional, as in the data.
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "completion": ("prompt",),
    "alpaca": ("instruction", "input"),
    "chat": ("messages",),
    "text": ("text",),
    "classification": ("text",),
}
OPTIONAL_FIELDS = {"alpaca": ("input",)}
CHAT_ROLES = ("system", "user", "assistant")


def chat_problem(messages: Any, ends_with: str = "assistant") -> str | None:
    """Why ``messages`` is not a valid chat (None when it is): optional system, then user/assistant turns
    alternating, the last one ``ends_with`` (a training record ends with the answer; a request with the question).
    """
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {role, content} objects"
    roles: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return f"message {i} must be an object with 'role' and 'content'"
        if m["role"] not in CHAT_ROLES:
            return f"message {i} has role {m['role']!r}; use one of {', '.join(CHAT_ROLES)}"
        if not isinstance(m["content"], str):
            return f"message {i} content must be a string"
        if m["role"] == "assistant" and not m["content"].strip():
            return f"message {i} is an empty assistant turn"
        roles.append(m["role"])
    turns = roles[1:] if roles[0] == "system" else roles
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            offset = len(roles) - len(turns)
            return (
                f"roles out of order: message {i + offset} is {role!r} where {expected!r} belongs "
                f"(order: {' → '.join(roles)}; expected optional system, then user/assistant alternating)"
            )
    if turns[-1:] != [ends_with]:
        return f"the chat must end with {'an' if ends_with == 'assistant' else 'a'} {ends_with} turn (order: {' → '.join(roles)})"
    return None


class ContractError(ValueError):
    """A request (or a contract file) the contract cannot render; the message names what is wrong."""


class MissingField(ContractError):
    """The request lacks a field the contract's template needs."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.field = name


def fill_template(template: str, prompt: str) -> str:
    """``template`` with ``{prompt}`` replaced (other braces are left alone, unlike ``str.format``)."""
    return template.replace("{prompt}", prompt)


def chat_prompt(messages: Sequence[Mapping[str, str]], tokenizer: Any) -> str:
    """The base's chat template rendering ``messages``, ending where the assistant's answer starts."""
    try:
        return str(tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))
    except Exception as exc:  # jinja2's TemplateError and friends: the template refuses these messages
        raise ContractError(f"the base's chat template refuses these messages: {exc}") from exc


def render_prompt(fmt: str, template: str, record: Mapping[str, Any], tokenizer: Any = None) -> str:
    """The prompt a record of ``fmt`` is shown as: the one rendering training, evaluation and serving share.

    completion: the template around ``prompt``; alpaca: the template around ``instruction`` (and ``input`` after a
    blank line when given); chat: the base's chat template over ``messages`` with the generation prompt; text and
    classification: the text itself. The record's fields are checked by the caller (data formats or the contract).
    """
    if fmt == "completion":
        return fill_template(template, record["prompt"])
    if fmt == "alpaca":
        extra = record.get("input") or ""
        return fill_template(template, record["instruction"] + (f"\n\n{extra}" if extra.strip() else ""))
    if fmt == "chat":
        if tokenizer is None:
            raise ContractError("a chat prompt needs the base's tokenizer (its chat template)")
        return chat_prompt(record["messages"], tokenizer)
    return str(record["text"])


@dataclass(frozen=True)
class ServingContract:
    """How requests to one adapter are rendered and decoded: exactly as its evaluation did."""

    task: str  # causal_lm_sft | sequence_classification
    format: str  # the data format of its records: completion, alpaca, chat, text, classification
    prompt_template: str = "{prompt}"  # completion/alpaca; chat uses the base's chat template
    answer_separator: str = (
        ""  # exact match compares the text before it; a constrained answer goes on after it
    )
    decoding: str = "greedy"  # greedy | constrained (the answer before the separator is one of ``answers``)
    answers: tuple[str, ...] = ()  # the closed answer set of constrained decoding
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS  # the answer budget evaluation used (a longer answer is cut)
    stop: str = "eos"  # generation stops at the base's end-of-sequence token (or the budget)
    base_quantization: str = ""  # "" (full precision) or how the base was quantised when scored, e.g. "nf4"
    max_prompt_tokens: int | None = None  # training's max_length: longer prompts were never trained or scored
    system_message: str = ""  # chat: the system turn every training conversation began with ("" if none)
    labels: tuple[str, ...] = ()  # a classifier's labels, in head order
    contract_version: int = CONTRACT_VERSION
    missing: tuple[str, ...] = field(default=(), compare=False)  # what a legacy folder lacks (not saved)

    # ------------------------------------------------------------------------------------ requests
    @property
    def fields(self) -> tuple[str, ...]:
        return FORMAT_FIELDS.get(self.format, ("prompt",))

    @property
    def chat_template(self) -> bool:
        return self.format == "chat"

    @property
    def complete(self) -> bool:
        """False for the stand-in of a folder registered without ``serving.json``."""
        return not self.missing

    def record(self, value: str | Mapping[str, Any]) -> dict[str, Any]:
        """A request's ``input`` as a record of the adapter's format: a string fills the first field (a chat
        turns it into one user message); a mapping gives the fields by name."""
        if not self.complete:
            raise ContractError(
                f"this adapter was registered without a serving contract ({CONTRACT_FILE}: no "
                f"{', '.join(self.missing)}), so 'input' cannot be rendered; send the full prompt as 'prompt'"
            )
        if self.format == "text":
            raise ContractError(
                "a text-format adapter continues free text and was evaluated from an empty prompt: send the text "
                "to continue as 'prompt'"
            )
        if isinstance(value, str):
            if not value.strip():
                raise ContractError("'input' is empty")
            if self.format == "chat":
                system = [{"role": "system", "content": self.system_message}] if self.system_message else []
                return {"messages": [*system, {"role": "user", "content": value}]}
            return {self.fields[0]: value}
        if not isinstance(value, Mapping):
            raise ContractError(f"'input' must be a string or an object of {list(self.fields)}")
        for name in self.fields:
            if name in OPTIONAL_FIELDS.get(self.format, ()):
                continue
            if name not in value:
                raise MissingField(
                    name,
                    f"the template of this adapter needs field {name!r} ({self.format} format: "
                    f"{list(self.fields)}); the request gave {sorted(value) or 'none'}",
                )
        unknown = sorted(set(value) - set(self.fields))
        if unknown:
            raise ContractError(
                f"'input' has field(s) {unknown} that the {self.format} template does not use; "
                f"its fields: {list(self.fields)}"
            )
        record = {n: ("" if value.get(n) is None and n in OPTIONAL_FIELDS.get(self.format, ()) else value[n])
                  for n in self.fields if n in value}  # fmt: skip
        for name, given in record.items():
            if name == "messages":
                problem = chat_problem(given, ends_with="user")
                if problem:
                    raise ContractError(f"'input.messages': {problem}")
            elif not isinstance(given, str):
                raise ContractError(f"'input.{name}' must be a string, got {type(given).__name__}")
            elif not given.strip() and name not in OPTIONAL_FIELDS.get(self.format, ()):
                raise ContractError(f"'input.{name}' is empty (training refuses empty fields too)")
        return record

    def render(self, value: str | Mapping[str, Any], tokenizer: Any = None) -> str:
        """The prompt for a request's ``input``, rendered as evaluation rendered its test rows."""
        return render_prompt(self.format, self.prompt_template, self.record(value), tokenizer)

    # ------------------------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("missing")
        data["answers"] = list(self.answers)
        data["labels"] = list(self.labels)
        data["fields"] = list(self.fields)  # for people and other tools; derived from format
        data["chat_template"] = self.chat_template
        return data

    def write(self, folder: Path | str) -> Path:
        path = Path(folder) / CONTRACT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "") -> ServingContract:
        where = source or CONTRACT_FILE
        if not isinstance(data, Mapping):
            raise ContractError(f"{where}: not a JSON object")
        version = data.get("contract_version")
        if version != CONTRACT_VERSION:
            raise ContractError(
                f"{where}: contract_version {version!r} is not {CONTRACT_VERSION}; upgrade adapter-registry"
            )
        known = {f for f in cls.__dataclass_fields__ if f != "missing"}
        values = {k: v for k, v in data.items() if k in known}
        try:
            contract = cls(**values)
        except TypeError as exc:
            raise ContractError(f"{where}: {exc}") from exc
        contract = cls(
            **{**asdict(contract), "answers": tuple(contract.answers), "labels": tuple(contract.labels)}
        )
        if contract.format not in FORMAT_FIELDS:
            raise ContractError(
                f"{where}: format {contract.format!r} is not one of {', '.join(FORMAT_FIELDS)}"
            )
        if contract.decoding not in ("greedy", "constrained"):
            raise ContractError(f"{where}: decoding {contract.decoding!r} is not greedy or constrained")
        if contract.decoding == "constrained" and not contract.answers:
            raise ContractError(f"{where}: constrained decoding needs a non-empty 'answers' list")
        if not isinstance(contract.max_new_tokens, int) or contract.max_new_tokens < 1:
            raise ContractError(f"{where}: max_new_tokens must be a positive integer")
        return contract

    @classmethod
    def read(cls, folder: Path | str) -> ServingContract | None:
        """The folder's contract; None when it has no ``serving.json`` (see :func:`contract_of`)."""
        path = Path(folder) / CONTRACT_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ContractError(f"{path}: not JSON ({exc})") from exc
        return cls.from_dict(data, str(path))


def contract_of(folder: Path | str, task: str = "causal_lm_sft") -> ServingContract:
    """The contract of an adapter folder; for a folder registered before contracts, a stand-in that names what
    is missing (``missing``), decoding over its legacy ``answers.json`` when it has one."""
    contract = ServingContract.read(folder)
    if contract is not None:
        return contract
    missing = ["prompt template", "decoding", "max_new_tokens"]
    legacy = Path(folder) / LEGACY_ANSWERS_FILE
    if legacy.is_file():
        try:
            data = json.loads(legacy.read_text())
        except json.JSONDecodeError as exc:
            raise ContractError(f"{legacy}: not JSON ({exc}); it should be written by save_adapter") from exc
        answers = data.get("answers") if isinstance(data, dict) else None
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a for a in answers):
            raise ContractError(f"{legacy}: 'answers' must be a non-empty list of non-empty strings")
        separator = data.get("separator", "")
        if not isinstance(separator, str):
            raise ContractError(f"{legacy}: 'separator' must be a string")
        return ServingContract(
            task=task, format="completion", answer_separator=separator, decoding="constrained",
            answers=tuple(answers), missing=("prompt template", "max_new_tokens"),
        )  # fmt: skip
    return ServingContract(task=task, format="completion", missing=tuple(missing))
