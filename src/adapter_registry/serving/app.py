"""HTTP serving of every registered adapter of one stage on one base model (FastAPI): the routes.

    POST /v1/generate         {"adapter": NAME | "tenant": T | "route": ROUTER, "input": "<the user's text>" | {fields},
                               "max_new_tokens": int (default: the adapter's contract's)}
                              or, instead of "input", "prompt": an already-templated prompt sent as it is
    GET  /v1/adapters         what is served (name, version, digest, contract, resident) and what was refused, why
    POST /v1/feedback         {"request_id": ID, "correct": bool | "label": "<the right category>"}: a user's verdict
                              on an answer (404: unknown id; 410: older than --feedback-ttl; 409: given already)
    GET  /v1/canary           the running canaries' live figures per version (``serving.canary``)
    POST /v1/registry/events  the tracking server's signed webhook: an alias moved, re-sync now
    GET  /v1/models, POST /v1/completions, POST /v1/chat/completions   the OpenAI API (``serving.openai_api``)
    GET  /metrics             Prometheus metrics (``serving.metrics``)
    GET  /health              ok, or degraded (a failed registry poll; a stage holder that cannot be loaded, named);
                              never waits on the model

``input`` is rendered by the adapter's serving contract (``serving.json``, saved with it: the prompt template or
chat template, decoding, answer set, answer budget its evaluation used), so a served answer is the evaluated one.
Every response names what answered it, in its body and in ``X-Adapter-*`` headers: adapter, version, the sha256
digest of its weights and the base fingerprint. One JSON line per request goes to the request log.

Adapters come from an ``AdapterSource`` (``serving.sync``; the MLflow registry through ``AdapterStore``): the
version of each registered adapter that holds the stage (``production`` by default) and that an audited promotion
placed there, if it was trained on the served base for causal-LM generation; others are refused with a logged
reason. A stage alias moved outside adapter-registry is not served: the last attested version keeps serving. A
poller re-reads the registry every ``poll_seconds`` (at once on a verified webhook): when an alias moves, the new
version is pulled (sha256-checked) and loaded beside the old one, which keeps serving until the pool swaps the name
over.

Every servable version is pulled into a local cache; at most ``max_resident`` are loaded, the others on their first
request (``serving.residency``: least recently used evicted, ``pinned`` never). Concurrent requests are gathered by
one worker thread (``serving.batcher``) into mixed batches and run through the pool's mixed-batch path; its queue
is bounded (``max_queue``: 429 with Retry-After beyond), each request has a deadline (``request_timeout``: 504,
dropped), a request whose client left is dropped, and a stopping server (SIGTERM) answers queued requests 503,
finishes the running batch and exits within ``shutdown_timeout`` (``serving.service`` follows one request). A
prompt over ``max_prompt_tokens`` (2048 by default: one long prompt would otherwise stall every request batched
with it), or one that with its answer budget overruns the base's context window, is answered 413 and the rest of
its batch is served.

While a canary of an adapter runs, a share of its requests (sticky per ``X-Canary-Key``/``user``, tenant or request
id) is answered by the candidate, whose answers name its own version and digest (``serving.canary``). The replica
announces itself and what it serves in the registry's fleet every ``heartbeat_seconds`` (``serving.fleet``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response  # FastAPI reads route annotations from the module's names
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapter_registry.serving.batcher import Batcher
from adapter_registry.serving.canary import CANARY_SUFFIX, ExpiredRequest, FeedbackBook, UnknownRequest
from adapter_registry.serving.fleet import FleetHeartbeat, fleet_snapshot
from adapter_registry.serving.metrics import CONTENT_TYPE_LATEST, ServingMetrics
from adapter_registry.serving.openai_api import add_openai_routes
from adapter_registry.serving.pool import AdapterPool, Input
from adapter_registry.serving.request_log import RequestLog
from adapter_registry.serving.residency import Residency, check_capacity
from adapter_registry.serving.routing import routed_request
from adapter_registry.serving.service import Call, Refusal, Service, provenance_headers
from adapter_registry.serving.sync import AdapterCache, AdapterSource, RegistrySource, RegistrySync
from adapter_registry.serving.tenants import check_tenants, load_tenants
from adapter_registry.serving.webhooks import WebhookRegistration

__all__ = ["ServeOptions", "build_server", "create_app", "serve"]

log = logging.getLogger("adapter_registry.serving")
DEFAULT_REQUEST_LOG = Path("logs/requests.jsonl")
MAX_WEBHOOK_BYTES = 64 * 1024


# ------------------------------------------------------------------------------------------------ requests
class FeedbackRequest(BaseModel):
    """Body of POST /v1/feedback: a user's verdict on one answer of this replica."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, description="the answer's request_id (X-Request-Id)")
    correct: bool | None = Field(default=None, description="whether the answer was right")
    label: str | None = Field(
        default=None, min_length=1, description="the right answer's category: compared to the answer's (the text "
        "before the separator); also judges a shadowed candidate's answer to the same request",
    )  # fmt: skip

    @model_validator(mode="after")
    def _one_verdict(self) -> FeedbackRequest:
        if (self.correct is None) == (self.label is None):
            raise ValueError("give exactly one of 'correct' (true or false) or 'label' (the right category)")
        return self


class GenerateRequest(BaseModel):
    """Body of POST /v1/generate: name an adapter or a tenant, and give the user's input (or a full prompt)."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(default=None, description="registered adapter name")
    tenant: str | None = Field(default=None, description="tenant id, mapped to an adapter by tenants.yml")
    input: str | dict[str, Any] | None = Field(
        default=None,
        description="the user's text (or the record's fields by name), rendered by the adapter's serving "
        "contract exactly as evaluation rendered its test rows",
    )
    prompt: str | None = Field(
        default=None, min_length=1, description="an already-templated prompt, sent to the model as it is"
    )
    max_new_tokens: int | None = Field(
        default=None, ge=1, le=512, description="answer budget; default: the one evaluation used"
    )
    user: str | None = Field(
        default=None, description="the end user (or any key): while a canary runs, one key, one version"
    )
    route: str | None = Field(
        default=None, description="a registered request router: it picks the adapter (serving.routing)"
    )

    @model_validator(mode="after")
    def _one_target(self) -> GenerateRequest:
        # a router picks the adapter; route with adapter/tenant or with prompt is a 400 from the route (clearer)
        if self.route is not None:
            return self
        if (self.adapter is None) == (self.tenant is None):
            raise ValueError(
                "name exactly one of 'adapter' or 'tenant' (or 'route': a router picks the adapter)"
            )
        if (self.input is None) == (self.prompt is None):
            raise ValueError(
                "give exactly one of 'input' (the user's text; the adapter's template is applied) or 'prompt' "
                "(a full prompt, sent as it is)"
            )
        if isinstance(self.input, str) and not self.input.strip():
            raise ValueError("'input' is empty")
        return self


# ------------------------------------------------------------------------------------------------ the app
def create_app(
    pool: AdapterPool,
    source: AdapterSource,
    *,
    base_identity: str = "",
    stage: str = "production",
    tenants: dict[str, str] | None = None,
    poll_seconds: float = 10.0,
    max_batch: int = 8,
    request_log: RequestLog | None = None,
    webhook: WebhookRegistration | None = None,
    max_resident: int | None = None,
    pinned: Iterable[str] = (),
    cache_dir: Path | None = None,
    max_queue: int | None = 64,
    request_timeout: float | None = 60.0,
    heartbeat: FleetHeartbeat | None = None,
    feedback_ttl: float = 3600.0,
) -> FastAPI:
    """The FastAPI app: syncs with ``source`` at start-up, then every ``poll_seconds`` (or at once on a verified
    registry webhook) in a thread. ``pinned``: adapter names (or tenants) always resident. ``heartbeat``: this
    replica's announcement in the fleet (started after the first sync). ``feedback_ttl``: seconds an answer takes
    feedback."""
    from fastapi.responses import JSONResponse

    tenants = dict(tenants or {})
    pins = sorted({tenants.get(p, p) for p in pinned})
    check_capacity(max_resident, pins)
    metrics = ServingMetrics()
    residency = Residency(pool, max_resident, pins, metrics)
    sync = RegistrySync(pool, source, pool.fingerprint, residency=residency, cache=AdapterCache(cache_dir))
    service = Service(
        pool=pool, sync=sync, residency=residency, batcher=Batcher(pool, max_batch=max_batch, max_queue=max_queue),
        metrics=metrics, tenants=tenants,
        base={"identity": base_identity, "fingerprint": pool.fingerprint, "stage": stage,
              "quantization": pool.quantization or "none"},
        poll_seconds=poll_seconds, requests=request_log or RequestLog(None), request_timeout=request_timeout,
        feedback=FeedbackBook(feedback_ttl), replica=heartbeat.replica if heartbeat is not None else "",
    )  # fmt: skip
    metrics.bind(
        lambda: [
            (
                s.metadata.get("adapter", s.name),
                s.metadata.get("version", ""),
                s.metadata.get("digest", ""),
                s.name in pool,
            )
            for s in residency.servables()
        ],
        max_resident,
        service.batcher.figures,
    )
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            recheck = service.sync.recheck_in()  # sooner when a stage holder has not settled yet
            service.wake.wait(service.poll_seconds if recheck is None else min(recheck, service.poll_seconds))
            service.wake.clear()
            if not stop.is_set():
                service.sync.sync()
                if heartbeat is not None:
                    heartbeat.update(fleet_snapshot(service.sync))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if webhook is not None:
            service.webhook_secret = await asyncio.to_thread(webhook.start)
        await asyncio.to_thread(service.sync.sync)
        if heartbeat is not None:
            heartbeat.update(fleet_snapshot(service.sync))
            await asyncio.to_thread(heartbeat.start)
        for pin in pins:
            if residency.servable(pin) is None:
                log.warning("--pin %s: no servable %s version of it (yet)", pin, stage)
        service.batcher.start()
        poller = threading.Thread(target=poll, name="registry-poller", daemon=True)
        poller.start()
        log.info(
            "serving %d adapters (%d resident, at most %s) on %s (%s)", len(residency), len(pool),
            max_resident or "all", base_identity, pool.fingerprint,
        )  # fmt: skip
        yield
        stop.set()
        service.wake.set()
        service.begin_shutdown()
        poller.join(timeout=2)  # a registry call under way is left to its thread (a daemon)
        service.batcher.stop(timeout=5)
        if heartbeat is not None:
            await asyncio.to_thread(heartbeat.stop)
        service.requests.close()
        service.sync.close()
        if webhook is not None:
            webhook.stop()

    app = FastAPI(title="adapter-registry serving", lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> Response:
        """FastAPI's own 422, and its line in the request log (a malformed request is a request too)."""
        response = await request_validation_exception_handler(request, exc)
        if request.url.path.startswith("/v1/"):
            request_id = uuid.uuid4().hex
            response.headers["X-Request-Id"] = request_id
            service.requests.write({"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                                    "request_id": request_id, "path": request.url.path, "status": 422,
                                    "error": "; ".join(str(e.get("msg")) for e in exc.errors())})  # fmt: skip
        return response

    @app.exception_handler(Exception)
    async def failure(request: Request, exc: Exception) -> Response:
        request_id = uuid.uuid4().hex
        log.exception("request %s to %s failed", request_id, request.url.path)
        service.requests.write({"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                                "request_id": request_id, "path": request.url.path, "status": 500,
                                "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); request {request_id}"}, 500,
                            {"X-Request-Id": request_id})  # fmt: skip

    def refuse(refusal: Refusal, call: Call) -> JSONResponse:
        headers = service.refused(call, refusal)
        return JSONResponse(
            {"detail": refusal.message, "request_id": call.request_id}, refusal.status, headers
        )

    @app.post("/v1/generate")
    async def generate(body: GenerateRequest, request: Request) -> Response:
        if body.route is not None:
            return await routed_request(service, body, request)
        name, tenant = body.adapter, body.tenant
        if tenant is not None:
            name = service.tenants.get(tenant)
            if name is None:
                known = ", ".join(sorted(service.tenants)) or "none"
                message = f"tenant {tenant!r} is not in the tenants file (tenants: {known})"
                return refuse(Refusal(404, message, "not_served"), service.call("generate", "", tenant))
        assert name is not None
        call = service.call("generate", name, tenant, request.headers.get("x-canary-key") or body.user)
        prompt: str | Input = Input(body.input) if body.input is not None else str(body.prompt)
        try:
            deadline = service.admit(call, prompt)
            result = await service.generate(call, prompt, body.max_new_tokens, request, deadline)
        except Refusal as refusal:
            return refuse(refusal, call)
        facts = service.answered(call, result, {"input": body.input})
        latency_ms = facts.pop("latency_ms")
        contract = result.served_by.contract if result.served_by is not None else None
        payload = {
            **facts, "tenant": tenant, "request_id": call.request_id, "text": result.text,
            "constrained": result.constrained, "contract": bool(contract and contract.complete),
            "prompt_tokens": result.prompt_tokens, "new_tokens": result.new_tokens, "latency_ms": latency_ms,
        }  # fmt: skip
        if call.route is not None:  # a canary runs: which side answered (a shadow copy is never the answer)
            payload["canary"] = "candidate" if call.target != call.name else "production"
        return JSONResponse(payload, headers=provenance_headers(facts, call.request_id))

    @app.get("/v1/adapters")
    async def adapters() -> dict[str, Any]:
        stale = service.sync.stale()  # served by an older version: the stage holder was refused or failed
        served = []
        for s in residency.servables():
            version = int(s.metadata.get("version", 0)) or None
            loaded = pool.info(s.name)
            contract = s.info.contract
            served.append({
                "name": s.metadata.get("adapter", s.name), "canary": s.name.endswith(CANARY_SUFFIX),
                "version": version, "digest": s.metadata.get("digest", ""),
                "fingerprint": s.metadata.get("fingerprint", ""),
                "resident": loaded is not None, "pinned": s.name in residency.pinned,
                "loaded_at": loaded.metadata.get("loaded_at") if loaded is not None else None,
                "layers": s.info.layers, "ranks": list(s.info.ranks), "bytes": s.info.nbytes,
                "answers": s.info.answers, "stage_holder": stale.get(s.name, version),
                "contract": contract.to_dict() if contract and contract.complete else None,
                "warnings": [f"registered without a serving contract: no {', '.join(contract.missing)}; "
                             "'input' is refused, send 'prompt'"] if contract and not contract.complete else [],
            })  # fmt: skip
        refused = [
            {"name": n, "version": v, "reason": r} for n, (v, r) in sorted(service.sync.refused.items())
        ]
        failed = [{"name": n, "version": v, "error": e} for n, (v, e) in sorted(service.sync.failed.items())]
        refused += [
            {"name": n, "version": v, "reason": r}
            for n, (v, r) in sorted(service.sync.routers.refused.items())
        ]
        routers = service.sync.routers.describe(service.sync)
        return {
            "base": service.base,
            "adapters": served,
            "routers": routers,
            "refused": refused,
            "failed": failed,
        }

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest) -> Response:
        """A user's verdict on an answer: counted for its version while its adapter's canary runs."""
        try:
            entry = service.feedback.find(body.request_id)
        except UnknownRequest:
            return JSONResponse({"detail": f"request {body.request_id!r} was not answered by this replica "
                                 f"({service.replica or 'this server'}): send feedback to the replica that answered"},
                                404)  # fmt: skip
        except ExpiredRequest:
            ttl = service.feedback.ttl
            return JSONResponse({"detail": f"request {body.request_id!r} was answered more than {ttl:g} s ago; "
                                 f"feedback is taken for --feedback-ttl {ttl:g} s: send it sooner"}, 410)  # fmt: skip
        if entry.feedback is not None:
            return JSONResponse({"detail": f"feedback on request {body.request_id!r} was given already "
                                 f"({entry.feedback}); it counts once"}, 409)  # fmt: skip
        label = body.label.strip() if body.label is not None else None
        correct = body.correct if label is None else entry.key == label
        assert correct is not None
        counted = service.canary.feedback(entry.adapter, entry.canary_id, entry.version, correct)
        shadow = None
        if label is not None and entry.shadow_key is not None and entry.shadow_version is not None:
            shadow_correct = entry.shadow_key == label
            service.canary.feedback(entry.adapter, entry.canary_id, entry.shadow_version, shadow_correct)
            shadow = {"version": entry.shadow_version, "correct": shadow_correct}
        entry.feedback = {"correct": correct, **({"label": label} if label is not None else {})}
        return JSONResponse({"request_id": body.request_id, "adapter": entry.adapter, "version": entry.version,
                             "correct": correct, "counted": counted, "shadow": shadow})  # fmt: skip

    @app.get("/v1/canary")
    async def canary() -> dict[str, Any]:
        """Live figures of every canary this replica serves, per version (the watcher sums them over the fleet)."""
        return {"replica": service.replica, "canaries": service.canary.report(service.sync.canaries)}

    @app.post("/v1/registry/events")
    async def registry_event(request: Request) -> Response:
        from adapter_registry.serving.webhooks import signature_problem

        if int(request.headers.get("content-length") or 0) > MAX_WEBHOOK_BYTES:
            service.webhooks["rejected"] += 1
            return JSONResponse(
                {"detail": f"ignored: a registry event is under {MAX_WEBHOOK_BYTES} bytes"}, 413
            )
        payload = await request.body()
        if not service.webhook_secret:
            service.webhooks["rejected"] += 1
            log.warning("registry webhook ignored: this server registered none (start it with --webhook-url)")
            return JSONResponse({"detail": "no webhook registered by this server"}, 404)
        problem = signature_problem(service.webhook_secret, dict(request.headers), payload)
        delivery = request.headers.get("x-mlflow-delivery-id", "")
        if problem is None and delivery in service.deliveries:
            problem = f"delivery {delivery} was received before (a replay)"
        if problem:
            service.webhooks["rejected"] += 1
            client = request.client.host if request.client else "?"
            log.warning("registry webhook from %s ignored: %s", client, problem)
            return JSONResponse({"detail": f"ignored: {problem}"}, 401)
        service.webhooks["accepted"] += 1
        service.deliveries[delivery] = time.time()
        while len(service.deliveries) > 1000:  # the replay window is 5 minutes: the oldest ids can go
            service.deliveries.pop(next(iter(service.deliveries)))
        log.info("registry webhook: %s; re-syncing now", payload[:200].decode("utf-8", "replace"))
        service.wake.set()
        return JSONResponse({"status": "sync scheduled"}, 202)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """``degraded`` when the last registry poll failed or a stage holder cannot be served: ``unloadable``
        names those whose files could not be fetched or failed their sha256 check, ``problems`` every stage
        holder this server should serve and cannot (also refused files, unattested holders, failed cold loads).
        Answered from plain attributes in the event loop: never waits on the model or a registry call."""
        sync = service.sync
        problems = service.problems()
        queue = service.batcher.figures()
        unloadable = [{"name": n, "version": v, "error": e} for n, (v, e) in sorted(sync.failed.items())]
        return {
            "status": "ok" if sync.last_error is None and not problems and not unloadable else "degraded",
            "unloadable": unloadable,
            "problems": [{"adapter": n, "version": v, "reason": r} for n, (v, r) in problems.items()],
            "base": service.base,
            "adapters": len(residency),
            "resident": len(pool),
            "max_resident": residency.max_resident,
            "last_sync": sync.last_sync.isoformat(timespec="seconds") if sync.last_sync else None,
            "last_sync_error": sync.last_error,
            "batches": queue["batches"],
            "largest_batch": queue["largest_batch"],
            "queue": {"depth": queue["depth"], "capacity": queue["capacity"], "in_flight": service.in_flight},
            "shutting_down": service.batcher.closing,
            "webhooks": dict(service.webhooks),
            "canaries": {n: {"version": r.version, "percent": r.percent, "shadow": r.shadow}
                         for n, r in sorted(sync.canaries.items())},
            "fleet": {"replica": heartbeat.replica, "run_id": heartbeat.run_id, "heartbeats": heartbeat.beats}
            if heartbeat is not None else None,
            "uptime_s": round(time.time() - service.started, 1),
        }  # fmt: skip

    @app.get("/metrics")
    async def metrics_route() -> Response:
        service.metrics.in_flight.set(service.in_flight)
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    add_openai_routes(app, service)
    return app


# ------------------------------------------------------------------------------------------------ server
@dataclass(frozen=True)
class ServeOptions:
    """Everything ``adapter-registry serve`` takes besides the base."""

    stage: str = "production"
    host: str = "127.0.0.1"
    port: int = 8000
    tracking_uri: str | None = None
    poll_seconds: float = 10.0
    tenants_file: Path | None = None
    max_batch: int = 8
    max_prompt_tokens: int | None = 2048
    quantization: str = ""  # serve the base quantised as QLoRA adapters were evaluated on it, e.g. "nf4-dq"
    request_log: Path | None = DEFAULT_REQUEST_LOG
    log_prompts: bool = False
    webhook_url: str | None = None  # this server's /v1/registry/events as the tracking server reaches it
    max_resident: int | None = None  # adapters loaded at once (others on their first request); None: all
    pin: tuple[str, ...] = ()  # adapters or tenants always resident
    adapter_cache: Path | None = None  # pulled adapter files (kept); None: a temporary folder
    max_queue: int | None = 64  # requests waiting for a batch; beyond: 429 with Retry-After
    request_timeout: float | None = 60.0  # seconds a request may take; then 504 and it is dropped
    shutdown_timeout: float = 5.0  # seconds in-flight requests get after SIGTERM before they are cancelled
    heartbeat_seconds: float = 5.0  # how often the replica announces itself in the fleet; 0: never
    advertise_url: str | None = None  # this replica's URL as operators reach it (default http://host:port)
    feedback_ttl: float = 3600.0  # seconds an answer takes feedback (POST /v1/feedback)


def build_server(base: str, options: ServeOptions | None = None) -> uvicorn.Server:
    """Check the tenants, load the base, connect the registry and return the (not yet started) uvicorn server."""
    from adapter_registry.bases.resolve import resolve_reference
    from adapter_registry.contract import QUANTIZATIONS
    from adapter_registry.registry.entities import PROMOTION_STAGES
    from adapter_registry.registry.store import AdapterStore

    o = options or ServeOptions()
    if o.request_timeout is not None and o.request_timeout <= 0:
        raise ValueError(f"--request-timeout {o.request_timeout} must be positive (seconds)")
    if o.heartbeat_seconds < 0:
        raise ValueError(f"--heartbeat-seconds {o.heartbeat_seconds} must be positive, or 0 for no heartbeat")
    if o.feedback_ttl <= 0:
        raise ValueError(f"--feedback-ttl {o.feedback_ttl} must be positive (seconds)")
    if o.stage not in (*PROMOTION_STAGES, "candidate"):
        raise ValueError(f"stage {o.stage!r} cannot be served; use production, staging or candidate")
    if o.quantization and o.quantization not in QUANTIZATIONS:
        raise ValueError(f"--quantization {o.quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    resolved = resolve_reference(base)
    store = AdapterStore(o.tracking_uri) if o.tracking_uri else AdapterStore.from_env()
    tenants = load_tenants(o.tenants_file)
    check_capacity(o.max_resident, {tenants.get(p, p) for p in o.pin})  # before the base is loaded
    source = str(o.tenants_file or "tenants")
    for warning in check_tenants(tenants, store, o.stage, resolved.fingerprint, source, o.quantization):
        log.warning(warning)
    pool = AdapterPool.from_pretrained(
        resolved.path, fingerprint=resolved.fingerprint, max_prompt_tokens=o.max_prompt_tokens,
        quantization=o.quantization,
    )  # fmt: skip
    heartbeat = None
    if o.heartbeat_seconds > 0:
        host = socket.gethostname() if o.host in ("0.0.0.0", "::", "") else o.host
        heartbeat = FleetHeartbeat(
            store, replica=f"{host}:{o.port}", url=o.advertise_url or f"http://{host}:{o.port}",
            base_fingerprint=resolved.fingerprint, base_identity=resolved.identity, quantization=o.quantization,
            stage=o.stage, interval=o.heartbeat_seconds,
        )  # fmt: skip
    app = create_app(
        pool, RegistrySource(store, o.stage), base_identity=resolved.identity, stage=o.stage, tenants=tenants,
        poll_seconds=o.poll_seconds, max_batch=o.max_batch, request_log=RequestLog(o.request_log, o.log_prompts),
        webhook=WebhookRegistration(store, o.webhook_url) if o.webhook_url else None,
        max_resident=o.max_resident, pinned=o.pin,
        cache_dir=o.adapter_cache, max_queue=o.max_queue, request_timeout=o.request_timeout,
        heartbeat=heartbeat, feedback_ttl=o.feedback_ttl,
    )  # fmt: skip
    config = uvicorn.Config(
        app, host=o.host, port=o.port, log_level="info", timeout_graceful_shutdown=math.ceil(o.shutdown_timeout)
    )  # fmt: skip
    return _Server(config, app.state.service)


class _Server(uvicorn.Server):
    """uvicorn's server, telling the service as soon as it starts to stop (SIGTERM, SIGINT): the queued requests
    are answered 503 at once instead of being served while the connections drain; the running batch finishes."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    async def shutdown(self, sockets: Any = None) -> None:
        self.service.begin_shutdown()
        await super().shutdown(sockets)


def serve(base: str, options: ServeOptions | None = None) -> None:
    """Serve every ``stage`` adapter registered for ``base`` until interrupted (``adapter-registry serve``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build_server(base, options).run()
