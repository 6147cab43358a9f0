"""Ask vLLM what evaluation asked the adapter: a request body built from the serving contract.

The contract (``serving.json``) says how evaluation rendered a test row and decoded the answer; the same facts
in vLLM's OpenAI-compatible API:

- the prompt: completion and alpaca records are rendered with the contract's template (``/v1/completions``); a
  chat record goes to ``/v1/chat/completions`` as messages, where vLLM applies the served base's chat template
  with the generation prompt, as the contract does;
- greedy decoding: ``temperature: 0``; the answer budget: ``max_tokens`` = the contract's ``max_new_tokens``;
  the stop rule: the base's end-of-sequence token, vLLM's default;
- constrained decoding over the closed answer set: vLLM's structured outputs
  (https://docs.vllm.ai/en/latest/features/structured_outputs/). Evaluation and ``serve`` constrain the answer to
  one of the set, then either the end of sequence or the separator and a free reply (``"damaged_item | Free
  replacement arranged."``); the same language as a regular expression is ``{"structured_outputs": {"regex":
  "(refund|damaged_item)( \\|[\\s\\S]*)?"}}``. Without a separator (or with ``free_reply=False``: the category
  alone, what exact match scores) it is a choice, ``{"structured_outputs": {"choice": [...]}}``. vLLM before v0.12
  took the older fields ``guided_regex`` / ``guided_choice`` (removed in v0.12.0): ``legacy=True`` writes those.

The answer budget is the contract's ``max_new_tokens``; evaluation gives an answer at least the tokens of the
longest closed part, which the contracts this project writes already cover.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapter_registry.contract import ServingContract, render_prompt

COMPLETIONS = "/v1/completions"
CHAT_COMPLETIONS = "/v1/chat/completions"


# The characters a regular expression (ECMAScript syntax, which vLLM's grammar backends read) gives a meaning to.
_REGEX_SPECIAL = frozenset("\\^$.|?*+()[]{}/")


def regex_literal(text: str) -> str:
    """``text`` as a regular expression that matches exactly it."""
    return "".join(f"\\{c}" if c in _REGEX_SPECIAL else c for c in text)


def answer_regex(answers: tuple[str, ...] | list[str], separator: str) -> str:
    """One of ``answers``, then nothing or the separator (its trailing spaces belong to the reply) and anything."""
    closed = "|".join(regex_literal(a) for a in answers)
    return f"({closed})({regex_literal(separator.rstrip())}[\\s\\S]*)?"


def structured_outputs(contract: ServingContract, free_reply: bool = True) -> dict[str, Any] | None:
    """vLLM's structured-output parameters for the contract's decoding (None for greedy decoding): the closed
    answer set with the free reply after the separator as a regex, or (no separator, or ``free_reply=False``) a
    choice over the answers."""
    if contract.decoding != "constrained":
        return None
    if free_reply and contract.answer_separator.strip():
        return {"regex": answer_regex(contract.answers, contract.answer_separator)}
    return {"choice": list(contract.answers)}


def request_body(
    contract: ServingContract,
    model: str,
    value: str | Mapping[str, Any],
    *,
    free_reply: bool = True,
    legacy: bool = False,
) -> tuple[str, dict[str, Any]]:
    """(endpoint path, JSON body) asking ``model`` (a LoRA name vLLM serves) for ``value`` as evaluation asked.

    ``value`` is a request's input: the user's text, or the record's fields by name (``contract.record`` checks
    them and raises ``ContractError`` naming what is wrong). ``free_reply=False``: the closed part only.
    ``legacy``: the fields of vLLM before v0.12.
    """
    record = contract.record(value)
    body: dict[str, Any] = {"model": model, "max_tokens": contract.max_new_tokens, "temperature": 0}
    if contract.chat_template:
        path = CHAT_COMPLETIONS
        body["messages"] = [dict(m) for m in record["messages"]]
    else:
        path = COMPLETIONS
        body["prompt"] = render_prompt(contract.format, contract.prompt_template, record)
    constraint = structured_outputs(contract, free_reply)
    if constraint is not None:
        if legacy:
            body.update({f"guided_{kind}": value for kind, value in constraint.items()})
        else:
            body["structured_outputs"] = constraint
    return path, body


def answer_text(response: Mapping[str, Any]) -> str:
    """The generated text of a completions or chat-completions response."""
    first = response["choices"][0]
    if "message" in first:
        return str(first["message"].get("content") or "")
    return str(first.get("text", ""))
