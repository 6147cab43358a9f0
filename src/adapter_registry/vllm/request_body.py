"""Ask vLLM what evaluation asked the adapter: a request body built from the serving contract.

The contract (``serving.json``) says how evaluation rendered a test row and decoded the answer; the same facts
in vLLM's OpenAI-compatible API:

- the prompt: completion and alpaca records are rendered with the contract's template (``/v1/completions``); a
  chat record goes to ``/v1/chat/completions`` as messages, where vLLM applies the served base's chat template
  with the generation prompt, as the contract does;
- greedy decoding: ``temperature: 0``; the answer budget: ``max_tokens`` = the contract's ``max_new_tokens``;
  the stop rule: the base's end-of-sequence token, vLLM's default;
- constrained decoding over the closed answer set: vLLM's structured outputs, ``{"structured_outputs":
  {"choice": [...]}}`` (https://docs.vllm.ai/en/latest/features/structured_outputs/). vLLM before v0.12 took the
  older field ``guided_choice`` instead (removed in v0.12.0): ``legacy_guided_choice=True`` writes that one.

Evaluation constrains the whole answer to one of the set, then the end of sequence; a choice does the same. (The
project's own server also lets the reply go on after the separator; exact match never scores it.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapter_registry.contract import ServingContract, render_prompt

COMPLETIONS = "/v1/completions"
CHAT_COMPLETIONS = "/v1/chat/completions"


def structured_outputs(contract: ServingContract) -> dict[str, Any] | None:
    """vLLM's structured-output parameters for the contract's decoding: a choice over the closed answer set, or
    None for greedy decoding."""
    if contract.decoding != "constrained":
        return None
    return {"choice": list(contract.answers)}


def request_body(
    contract: ServingContract,
    model: str,
    value: str | Mapping[str, Any],
    *,
    legacy_guided_choice: bool = False,
) -> tuple[str, dict[str, Any]]:
    """(endpoint path, JSON body) asking ``model`` (a LoRA name vLLM serves) for ``value`` as evaluation asked.

    ``value`` is a request's input: the user's text, or the record's fields by name (``contract.record`` checks
    them and raises ``ContractError`` naming what is wrong).
    """
    record = contract.record(value)
    body: dict[str, Any] = {"model": model, "max_tokens": contract.max_new_tokens, "temperature": 0}
    if contract.chat_template:
        path = CHAT_COMPLETIONS
        body["messages"] = [dict(m) for m in record["messages"]]
    else:
        path = COMPLETIONS
        body["prompt"] = render_prompt(contract.format, contract.prompt_template, record)
    choice = structured_outputs(contract)
    if choice is not None:
        if legacy_guided_choice:
            body["guided_choice"] = choice["choice"]
        else:
            body["structured_outputs"] = choice
    return path, body


def answer_text(response: Mapping[str, Any]) -> str:
    """The generated text of a completions or chat-completions response."""
    first = response["choices"][0]
    if "message" in first:
        return str(first["message"].get("content") or "")
    return str(first.get("text", ""))
