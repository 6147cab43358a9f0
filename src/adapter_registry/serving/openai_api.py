"""The OpenAI API over the served adapters: ``model`` is a served adapter's name or a tenant (tenants.yml).

    GET  /v1/models, /v1/models/{model}   the servable adapters, and the tenants (``root``: their adapter)
    POST /v1/completions                  ``prompt`` is sent to the model as it is (OpenAI's semantics: a raw
                                          prompt, nothing templated); for the adapter's template, send the text as
                                          one user message to /v1/chat/completions (or ``input`` to /v1/generate)
    POST /v1/chat/completions             the serving contract applies: the last user message is the ``input``
                                          rendered by the adapter's template (an adapter trained on chat records
                                          is given the whole conversation, through the base's chat template)

Decoding is the one the adapter's contract names (greedy, or constrained to its answer set), as evaluated, so
sampling parameters are refused unless they ask for greedy decoding (``temperature`` 0, ``top_p`` 1, ``n`` 1);
``seed`` is accepted and has no effect; ``user`` (or an ``X-Canary-Key`` header) sends one user to one version
while a canary runs (``serving.canary``); ``max_tokens`` (chat: also ``max_completion_tokens``) overrides the
contract's answer budget. ``stream: true`` sends server-sent events in OpenAI's chunk format as the
batch generates (a streamer hands each row's tokens out of the batched ``generate``), then ``data: [DONE]``;
``stream_options.include_usage`` adds the usage chunk.

Every answer names what answered it: ``X-Adapter-Name``/``-Version``/``-Digest``, ``X-Base-Fingerprint`` and
``X-Request-Id`` headers (a stream's too: they are sent once its version is known), ``system_fingerprint``
(``adapter/version@digest``), and a ``provenance`` object in the body (a stream's: in its last chunk). Errors have OpenAI's
shape, ``{"error": {"message", "type", "param", "code"}}``, with the HTTP status of the native API (a bad input
or a prompt too long: 400; an unknown model: 404; a full queue: 429 with ``Retry-After``; a request past its
deadline: 504; a stopping server: 503).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adapter_registry.serving.canary import CANARY_SUFFIX
from adapter_registry.serving.pool import Generation, Input
from adapter_registry.serving.service import Call, Refusal, Service, Stream, provenance, provenance_headers

__all__ = ["add_openai_routes"]


# ------------------------------------------------------------------------------------------------ requests
class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Decoding(BaseModel):
    """The fields both endpoints share; anything else OpenAI defines is refused by name (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="a served adapter's name, or a tenant")
    max_tokens: int | None = Field(
        default=None, ge=1, le=512, description="answer budget (default: contract's)"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, description="only 0: decoding is the contract's (greedy)")
    top_p: float | None = Field(default=None, description="only 1")
    n: int | None = Field(default=None, description="only 1")
    seed: int | None = None  # greedy decoding is deterministic: accepted, no effect
    user: str | None = None  # the end user: a canary sends the same user to the same version

    @field_validator("temperature")
    @classmethod
    def _greedy(cls, value: float | None) -> float | None:
        if value not in (None, 0):
            raise ValueError(
                "this server decodes as the adapter was evaluated (its serving contract: greedy or constrained); "
                "send temperature 0 or leave it out"
            )
        return value

    @field_validator("top_p")
    @classmethod
    def _no_nucleus(cls, value: float | None) -> float | None:
        if value not in (None, 1):
            raise ValueError("decoding is greedy: send top_p 1 or leave it out")
        return value

    @field_validator("n")
    @classmethod
    def _one(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("greedy decoding gives one answer: send n 1 or leave it out")
        return value


class CompletionRequest(_Decoding):
    prompt: str | list[str] = Field(description="the raw prompt, sent to the model as it is")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError(f"give one prompt (a string or a list of one), not {len(value)}")
        text = value if isinstance(value, str) else value[0]
        if not text:
            raise ValueError("the prompt is empty")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ...: kept out of the rendering

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text (OpenAI's text parts joined); other parts are refused."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"content part of type {part.get('type')!r}: only text is served")
            texts.append(part["text"])
        return "".join(texts)


class ChatRequest(_Decoding):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=512)

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if value[-1].role != "user":
            raise ValueError("the last message must be the user's: the adapter answers it")
        for message in value:
            message.text()  # refuses non-text parts now
        return value


# ------------------------------------------------------------------------------------------------ answers
def error(status: int, message: str, code: str, param: str | None = None, headers: dict[str, str] | None = None
          ) -> JSONResponse:  # fmt: skip
    """OpenAI's error shape."""
    kind = (
        "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    )
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status, headers)


def _openai_status(refusal: Refusal) -> int:
    return 400 if refusal.status in (413, 422) else refusal.status


def _fingerprint(facts: dict[str, Any]) -> str:
    return f"{facts['adapter']}/{facts['version']}@{facts['digest']}"


def _usage(result: Generation) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.new_tokens,
            "total_tokens": result.prompt_tokens + result.new_tokens}  # fmt: skip


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class _EventStream(StreamingResponse):
    """Server-sent events that close their Stream however the response ends (done, failed, client gone)."""

    def __init__(self, content: AsyncIterator[str], stream: Stream, headers: dict[str, str]) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"}
        )
        self._stream = stream

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stream.close()


# ------------------------------------------------------------------------------------------------ routes
def add_openai_routes(app: FastAPI, service: Service) -> None:
    """Mount the OpenAI-compatible routes on ``app``."""

    def models() -> list[dict[str, Any]]:
        listed = []
        for s in service.residency.servables():
            if s.name.endswith(CANARY_SUFFIX):  # a canary's candidate answers under its adapter's name
                continue
            listed.append({
                "id": s.name, "object": "model", "created": int(s.known_at), "owned_by": "adapter-registry",
                "root": s.name, "parent": service.base["identity"], "version": int(s.metadata.get("version", 0)),
                "digest": s.metadata.get("digest", ""), "resident": s.name in service.pool,
            })  # fmt: skip
        served = {m["id"]: m for m in listed}
        for tenant, adapter in sorted(service.tenants.items()):
            if adapter in served and tenant not in served:
                listed.append({**served[adapter], "id": tenant, "tenant": True})
        return listed

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": models()}

    @app.get("/v1/models/{model}")
    async def get_model(model: str) -> Response:
        found = next((m for m in models() if m["id"] == model), None)
        if found is None:
            return error(
                404, f"model {model!r} is not served; GET /v1/models lists them", "model_not_found", "model"
            )
        return JSONResponse(found)

    async def parse(request: Request, schema: type[_Decoding], api: str) -> tuple[Any, Response | None]:
        try:
            raw = await request.json()
        except ValueError:
            return None, error(400, "the body is not JSON", "invalid_json")
        try:
            return schema.model_validate(raw), None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            message = f"{where}: {first['msg'].removeprefix('Value error, ')}"
            call = service.call(api, str(raw.get("model", "")) if isinstance(raw, dict) else "", None)
            service.refused(call, Refusal(400, message, "bad_input"))
            return None, error(
                400, message, "invalid_request", str(first["loc"][0]) if first["loc"] else None
            )

    async def answer(
        request: Request, body: _Decoding, api: str, prompt_of: Any, max_new_tokens: int | None
    ) -> Response:
        name, tenant = service.adapter_of(body.model)
        call = service.call(api, name, tenant, request.headers.get("x-canary-key") or body.user)
        created = int(time.time())
        try:
            prompt = prompt_of(name)
            deadline = service.admit(call, prompt)
            if body.stream:
                stream = await service.stream(call, prompt, max_new_tokens, request, deadline)
            else:
                result = await service.generate(call, prompt, max_new_tokens, request, deadline)
        except Refusal as refusal:
            headers = service.refused(call, refusal)
            code = (
                "model_not_found"
                if refusal.reason == "not_served" and refusal.status == 404
                else refusal.reason
            )
            param = "model" if code == "model_not_found" else refusal.param
            return error(_openai_status(refusal), refusal.message, code, param, headers)
        if body.stream:
            facts = provenance(stream.info, service.pool.fingerprint)
            events = _events(service, call, stream, body, api, created, facts)
            return _EventStream(events, stream, provenance_headers(facts, call.request_id))
        facts = service.answered(call, result, {"input": getattr(prompt, "value", prompt)})
        return JSONResponse(
            _body(api, call, body, result, facts, created), headers=provenance_headers(facts, call.request_id)
        )

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body, problem = await parse(request, CompletionRequest, "completions")
        if problem is not None:
            return problem
        raw = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        return await answer(request, body, "completions", lambda _name: raw, body.max_tokens)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body, problem = await parse(request, ChatRequest, "chat")
        if problem is not None:
            return problem

        def prompt_of(name: str) -> Input:
            servable = service.residency.servable(name)
            contract = servable.info.contract if servable is not None else None
            if (
                contract is not None and contract.format == "chat"
            ):  # trained on conversations: give it this one
                return Input({"messages": [{"role": m.role, "content": m.text()} for m in body.messages]})
            return Input(body.messages[-1].text())

        return await answer(request, body, "chat", prompt_of, body.max_completion_tokens or body.max_tokens)


def _head(api: str, call: Call, created: int, facts: dict[str, Any]) -> dict[str, Any]:
    chat = api == "chat"
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{call.request_id}", "created": created,
        "model": facts["adapter"] or call.name, "system_fingerprint": _fingerprint(facts),
    }  # fmt: skip


def _provenance(call: Call, facts: dict[str, Any], result: Generation | None) -> dict[str, Any]:
    return {
        "adapter": facts["adapter"], "version": facts["version"], "digest": facts["digest"],
        "base_fingerprint": facts["base_fingerprint"], "tenant": call.tenant, "request_id": call.request_id,
        **({"constrained": result.constrained} if result is not None else {}),
    }  # fmt: skip


def _body(api: str, call: Call, body: _Decoding, result: Generation, facts: dict[str, Any], created: int
          ) -> dict[str, Any]:  # fmt: skip
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": result.finish_reason}
    if api == "chat":
        choice["message"] = {"role": "assistant", "content": result.text}
        kind = "chat.completion"
    else:
        choice["text"] = result.text
        kind = "text_completion"
    return {**_head(api, call, created, facts), "object": kind, "choices": [choice], "usage": _usage(result),
            "provenance": _provenance(call, facts, result)}  # fmt: skip


async def _events(
    service: Service,
    call: Call,
    stream: Stream,
    body: _Decoding,
    api: str,
    created: int,
    facts: dict[str, Any],
) -> AsyncIterator[str]:
    """The chunks of one streamed answer, in OpenAI's format, then ``[DONE]``."""
    chat = api == "chat"
    usage = bool(body.stream_options and body.stream_options.include_usage)
    head = {
        **_head(api, call, created, facts),
        "object": "chat.completion.chunk" if chat else "text_completion",
    }
    extra = {"usage": None} if usage else {}

    def chunk(piece: str | None, finish: str | None = None, **more: Any) -> str:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if chat:
            choice["delta"] = {} if piece is None else {"content": piece}
        else:
            choice["text"] = piece or ""
        return _sse({**head, "choices": [choice], **extra, **more})

    if chat:
        yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}], **extra})  # fmt: skip
    try:
        async for piece in stream.pieces():
            yield chunk(piece)
        result = stream.result()
    except Refusal as refusal:
        service.refused(call, refusal)
        yield _sse({"error": {"message": refusal.message, "type": "server_error", "param": None,
                              "code": refusal.reason}})  # fmt: skip
        return
    service.answered(call, result, {})
    yield chunk(None, result.finish_reason, provenance=_provenance(call, facts, result))
    if usage:
        yield _sse({**head, "choices": [], "usage": _usage(result)})
    yield _sse("[DONE]")
