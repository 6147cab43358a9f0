"""Request routing in ``serve``: ``{"route": "<router>", "input": ...}`` answered by the expert the router picks.

The routers served are ``serving.routers.Routers`` (kept per poll by the sync). :func:`routed_generate` is one
routed request's course: the router classifies the request's text (``routing.route_text``, what its training rows were derived from), ``routing.decide`` takes the
top-1 expert or, below the router's threshold, its fallback, and the chosen expert answers through the same
``Service`` path as a request naming it (its own serving contract, canary, queue, deadline, request log). The
response names the router (name, version, digest), the expert that answered (name, version, digest) and the
confidence, and says whether the expert's served version is the one the router pinned (``pinned``); a router whose
expert serves another version is listed in ``GET /v1/adapters`` and ``/health`` as a problem (it was evaluated
with the pinned one), and still routes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from adapter_registry.routing import RoutingError, route_text
from adapter_registry.serving.routers import Routers

if TYPE_CHECKING:
    from fastapi import Request
    from fastapi.responses import JSONResponse

    from adapter_registry.serving.service import Service

__all__ = ["routed_generate", "routed_request"]


async def routed_request(service: Service, body: Any, request: Request | None) -> JSONResponse:
    """POST /v1/generate with ``route``: 400 when it also names an adapter or tenant (the router picks the adapter)
    or sends ``prompt`` (a router classifies the user's ``input``, not a templated prompt); else routed."""
    from adapter_registry.serving.service import Refusal

    problem = None
    if body.adapter is not None or body.tenant is not None:
        named = "adapter" if body.adapter is not None else "tenant"
        problem = (
            f"the request names both 'route' ({body.route!r}) and '{named}' "
            f"({body.adapter if body.adapter is not None else body.tenant!r}): give 'route' to let the router pick "
            f"the adapter, or '{named}' alone to choose it yourself"
        )
    elif body.input is None:
        problem = "a routed request gives 'input' (the user's text the router classifies), not 'prompt'"
    if problem is not None:
        return _refuse(service, service.call("generate", "", body.tenant), Refusal(400, problem, "bad_input"))
    return await routed_generate(service, service.sync.routers, body, request)


async def routed_generate(
    service: Service, routers: Routers, body: Any, request: Request | None
) -> JSONResponse:
    """One routed request (``body``: a GenerateRequest with ``route`` and ``input``): the router's decision,
    then the chosen adapter's answer through ``service``; the response names both."""
    from fastapi.responses import JSONResponse

    from adapter_registry.serving.pool import Input
    from adapter_registry.serving.service import Refusal, provenance_headers

    name = str(body.route)
    slot = routers.slots.get(name)
    call = service.call("generate", "", None)
    if slot is None:
        why = routers.refused.get(name)
        served = sorted(routers.slots)
        message = (
            f"router {name!r} version {why[0]} is not served: {why[1]}"
            if why
            else f"router {name!r} is not served; routers served: {served}"
        )
        return _refuse(service, call, Refusal(404 if why is None else 409, message, "not_served"))
    try:
        text = route_text(body.input)
        decision = await asyncio.to_thread(slot.decide, text)
    except RoutingError as exc:
        return _refuse(service, call, Refusal(422, str(exc), "bad_input", param="input"))
    call = service.call(
        "generate",
        decision.adapter,
        None,
        (request.headers.get("x-canary-key") if request else None) or body.user,
    )
    prompt = Input(body.input)
    try:
        deadline = service.admit(call, prompt)
        result = await service.generate(call, prompt, body.max_new_tokens, request, deadline)
    except Refusal as refusal:
        return _refuse(service, call, refusal)
    facts = service.answered(call, result, {"input": body.input, "route": name})
    latency_ms = facts.pop("latency_ms")
    pinned = next((e for e in slot.facts.pinned if e.name == decision.adapter), None)
    contract = result.served_by.contract if result.served_by is not None else None
    payload = {
        **facts, "request_id": call.request_id, "text": result.text, "constrained": result.constrained,
        "contract": bool(contract and contract.complete), "prompt_tokens": result.prompt_tokens,
        "new_tokens": result.new_tokens, "latency_ms": latency_ms,
        "route": {
            "router": name, "router_version": slot.version.version, "router_digest": slot.digest,
            "expert": decision.adapter, "expert_version": facts["version"], "confidence": round(decision.confidence, 6),
            "top": decision.top, "abstained": decision.abstained, "threshold": slot.facts.threshold,
            "pinned_version": pinned.version if pinned else None,
            "pinned": pinned is not None and pinned.version == facts["version"],
        },
    }  # fmt: skip
    headers = {
        **provenance_headers(facts, call.request_id),
        "X-Router-Name": name, "X-Router-Version": str(slot.version.version),
        "X-Route-Confidence": f"{decision.confidence:.6f}",
    }  # fmt: skip
    return JSONResponse(payload, headers=headers)


def _refuse(service: Service, call: Any, refusal: Any) -> JSONResponse:
    from fastapi.responses import JSONResponse

    headers = service.refused(call, refusal)
    return JSONResponse({"detail": refusal.message, "request_id": call.request_id}, refusal.status, headers)
