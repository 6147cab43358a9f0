"""HTTP serving of every registered adapter of one stage on one base model (FastAPI): the routes.

    POST /v1/generate         {"adapter": NAME | "tenant": T, "input": "<the user's text>" | {fields},
                               "max_new_tokens": int (default: the adapter's contract's)}
                              or, instead of "input", "prompt": an already-templated prompt sent as it is
    GET  /v1/adapters         what is served (name, version, digest, contract) and what was refused, with why
    POST /v1/registry/events  the tracking server's signed webhook: an alias moved, re-sync now
    GET  /health              ok, or degraded (a failed registry poll; a stage holder that cannot be loaded, named)

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

Concurrent requests are gathered by one worker thread (``serving.batcher``) into mixed batches and run through the
pool's mixed-batch path. A prompt over ``max_prompt_tokens`` (2048 by default: one long prompt would otherwise
stall every request batched with it), or one that with its answer budget overruns the base's context window, is
answered 413 and the rest of its batch is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response  # FastAPI reads route annotations from the module's names
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapter_registry.contract import ContractError, MissingField
from adapter_registry.serving.batcher import Batcher
from adapter_registry.serving.pool import AdapterInfo, AdapterPool, Input, PoolError, PromptTooLong
from adapter_registry.serving.request_log import RequestLog
from adapter_registry.serving.sync import AdapterSource, RegistrySource, RegistrySync
from adapter_registry.serving.tenants import check_tenants, load_tenants
from adapter_registry.serving.webhooks import WebhookRegistration

if TYPE_CHECKING:
    import uvicorn

__all__ = ["ServeOptions", "build_server", "create_app", "serve"]

log = logging.getLogger("adapter_registry.serving")
DEFAULT_REQUEST_LOG = Path("logs/requests.jsonl")
MAX_WEBHOOK_BYTES = 64 * 1024


# ------------------------------------------------------------------------------------------------ requests
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

    @model_validator(mode="after")
    def _one_target(self) -> GenerateRequest:
        if (self.adapter is None) == (self.tenant is None):
            raise ValueError("name exactly one of 'adapter' or 'tenant'")
        if (self.input is None) == (self.prompt is None):
            raise ValueError(
                "give exactly one of 'input' (the user's text; the adapter's template is applied) or 'prompt' "
                "(a full prompt, sent as it is)"
            )
        if isinstance(self.input, str) and not self.input.strip():
            raise ValueError("'input' is empty")
        return self


def provenance(info: AdapterInfo | None, fingerprint: str) -> dict[str, Any]:
    """What answered a request: adapter, version, weights digest, base fingerprint."""
    meta = info.metadata if info is not None else {}
    return {
        "adapter": info.name if info is not None else None,
        "version": int(meta["version"]) if meta.get("version") else None,
        "digest": meta.get("digest", ""),
        "base_fingerprint": fingerprint,
    }


def provenance_headers(facts: dict[str, Any], request_id: str) -> dict[str, str]:
    return {
        "X-Request-Id": request_id,
        "X-Adapter-Name": str(facts["adapter"] or ""),
        "X-Adapter-Version": str(facts["version"] or ""),
        "X-Adapter-Digest": str(facts["digest"]),
        "X-Base-Fingerprint": str(facts["base_fingerprint"]),
    }


# ------------------------------------------------------------------------------------------------ service
@dataclass
class _Service:
    pool: AdapterPool
    sync: RegistrySync
    batcher: Batcher
    tenants: dict[str, str]
    base: dict[str, str]
    poll_seconds: float
    requests: RequestLog
    webhook_secret: str = ""
    wake: threading.Event = field(default_factory=threading.Event)  # set: poll the registry now
    webhooks: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "rejected": 0})
    deliveries: dict[str, float] = field(default_factory=dict)  # delivery ids accepted (replays are refused)
    started: float = field(default_factory=time.time)


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
) -> FastAPI:
    """The FastAPI app: syncs with ``source`` at start-up, then every ``poll_seconds`` (or at once on a verified
    registry webhook) in a thread."""
    from fastapi.responses import JSONResponse

    service = _Service(
        pool=pool,
        sync=RegistrySync(pool, source, pool.fingerprint),
        batcher=Batcher(pool, max_batch=max_batch),
        tenants=dict(tenants or {}),
        base={
            "identity": base_identity,
            "fingerprint": pool.fingerprint,
            "stage": stage,
            "quantization": pool.quantization or "none",
        },
        poll_seconds=poll_seconds,
        requests=request_log or RequestLog(None),
    )
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            recheck = service.sync.recheck_in()  # sooner when a stage holder has not settled yet
            service.wake.wait(service.poll_seconds if recheck is None else min(recheck, service.poll_seconds))
            service.wake.clear()
            if not stop.is_set():
                service.sync.sync()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if webhook is not None:
            service.webhook_secret = await asyncio.to_thread(webhook.start)
        await asyncio.to_thread(service.sync.sync)
        service.batcher.start()
        poller = threading.Thread(target=poll, name="registry-poller", daemon=True)
        poller.start()
        log.info("serving %d adapters on %s (%s)", len(pool), base_identity, pool.fingerprint)
        yield
        stop.set()
        service.wake.set()
        poller.join(timeout=60)
        service.batcher.stop()
        service.requests.close()
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

    def refuse(status: int, message: str, record: dict[str, Any], request_id: str) -> JSONResponse:
        service.requests.write({**record, "status": status, "error": message})
        return JSONResponse(
            {"detail": message, "request_id": request_id}, status, {"X-Request-Id": request_id}
        )

    @app.post("/v1/generate")
    async def generate(body: GenerateRequest) -> Response:
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        record: dict[str, Any] = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), "request_id": request_id,
            "tenant": body.tenant, "adapter": body.adapter,
        }  # fmt: skip
        name = body.adapter
        if body.tenant is not None:
            name = service.tenants.get(body.tenant)
            if name is None:
                known = ", ".join(sorted(service.tenants)) or "none"
                return refuse(404, f"tenant {body.tenant!r} is not in the tenants file (tenants: {known})",
                              record, request_id)  # fmt: skip
        assert name is not None
        record["adapter"] = name
        if name not in pool:
            refused = service.sync.refused.get(name)
            if refused:
                return refuse(409, f"adapter {name!r} version {refused[0]} is refused: {refused[1]}", record,
                              request_id)  # fmt: skip
            served = [a.name for a in pool.adapters()]
            return refuse(404, f"adapter {name!r} is not served; served: {served}", record, request_id)
        prompt: str | Input
        if body.input is not None:
            try:  # checked now for a clear 422 (no lock: never waits on a batch); rendered again by the version
                pool.render(name, body.input)  # that generates it, under the model lock
            except MissingField as exc:
                return refuse(422, f"{exc} (field: {exc.field})", record, request_id)
            except ContractError as exc:
                return refuse(422, str(exc), record, request_id)
            except PoolError as exc:  # unloaded in the meantime
                return refuse(404, str(exc), record, request_id)
            prompt = Input(body.input)
        else:
            assert body.prompt is not None
            prompt = body.prompt
        try:
            result = await asyncio.wrap_future(service.batcher.submit(name, prompt, body.max_new_tokens))
        except PromptTooLong as exc:
            return refuse(413, str(exc), record, request_id)
        except ContractError as exc:
            return refuse(422, str(exc), record, request_id)
        except PoolError as exc:
            return refuse(404, str(exc), record, request_id)
        facts = provenance(result.served_by, pool.fingerprint)
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        service.requests.write(
            {**record, **facts, "status": 200, "latency_ms": latency_ms, "prompt_tokens": result.prompt_tokens,
             "new_tokens": result.new_tokens},
            {"input": body.input, "prompt": result.prompt, "text": result.text},
        )  # fmt: skip
        contract = result.served_by.contract if result.served_by is not None else None
        payload = {
            **facts, "tenant": body.tenant, "request_id": request_id, "text": result.text,
            "constrained": result.constrained, "contract": bool(contract and contract.complete),
            "prompt_tokens": result.prompt_tokens, "new_tokens": result.new_tokens, "latency_ms": latency_ms,
        }  # fmt: skip
        return JSONResponse(payload, headers=provenance_headers(facts, request_id))

    @app.get("/v1/adapters")
    def adapters() -> dict[str, Any]:
        stale = service.sync.stale()  # served by an older version: the stage holder was refused or failed
        served = []
        for a in pool.adapters():
            version = int(a.metadata.get("version", 0)) or None
            contract = a.contract
            served.append({
                "name": a.name, "version": version, "digest": a.metadata.get("digest", ""),
                "fingerprint": a.metadata.get("fingerprint", ""), "loaded_at": a.metadata.get("loaded_at"),
                "layers": a.layers, "ranks": list(a.ranks), "bytes": a.nbytes, "answers": a.answers,
                "stage_holder": stale.get(a.name, version),
                "contract": contract.to_dict() if contract and contract.complete else None,
                "warnings": [f"registered without a serving contract: no {', '.join(contract.missing)}; "
                             "'input' is refused, send 'prompt'"] if contract and not contract.complete else [],
            })  # fmt: skip
        refused = [
            {"name": n, "version": v, "reason": r} for n, (v, r) in sorted(service.sync.refused.items())
        ]
        failed = [{"name": n, "version": v, "error": e} for n, (v, e) in sorted(service.sync.failed.items())]
        return {"base": service.base, "adapters": served, "refused": refused, "failed": failed}

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
    def health() -> dict[str, Any]:
        """``degraded`` when the last registry poll failed or a stage holder cannot be loaded (named in
        ``unloadable``: its files failed their sha256 check, or could not be fetched)."""
        sync = service.sync
        unloadable = [{"name": n, "version": v, "error": e} for n, (v, e) in sorted(sync.failed.items())]
        return {
            "status": "ok" if sync.last_error is None and not unloadable else "degraded",
            "unloadable": unloadable,
            "base": service.base,
            "adapters": len(pool),
            "last_sync": sync.last_sync.isoformat(timespec="seconds") if sync.last_sync else None,
            "last_sync_error": sync.last_error,
            "batches": service.batcher.batches,
            "largest_batch": service.batcher.largest_batch,
            "webhooks": dict(service.webhooks),
            "uptime_s": round(time.time() - service.started, 1),
        }

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


def build_server(base: str, options: ServeOptions | None = None) -> uvicorn.Server:
    """Check the tenants, load the base, connect the registry and return the (not yet started) uvicorn server."""
    import uvicorn

    from adapter_registry.bases.resolve import resolve_reference
    from adapter_registry.contract import QUANTIZATIONS
    from adapter_registry.registry.entities import PROMOTION_STAGES
    from adapter_registry.registry.store import AdapterStore

    o = options or ServeOptions()
    if o.stage not in (*PROMOTION_STAGES, "candidate"):
        raise ValueError(f"stage {o.stage!r} cannot be served; use production, staging or candidate")
    if o.quantization and o.quantization not in QUANTIZATIONS:
        raise ValueError(f"--quantization {o.quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    resolved = resolve_reference(base)
    store = AdapterStore(o.tracking_uri) if o.tracking_uri else AdapterStore.from_env()
    tenants = load_tenants(o.tenants_file)
    source = str(o.tenants_file or "tenants")
    for warning in check_tenants(tenants, store, o.stage, resolved.fingerprint, source, o.quantization):
        log.warning(warning)
    pool = AdapterPool.from_pretrained(
        resolved.path, fingerprint=resolved.fingerprint, max_prompt_tokens=o.max_prompt_tokens,
        quantization=o.quantization,
    )  # fmt: skip
    app = create_app(
        pool, RegistrySource(store, o.stage), base_identity=resolved.identity, stage=o.stage, tenants=tenants,
        poll_seconds=o.poll_seconds, max_batch=o.max_batch, request_log=RequestLog(o.request_log, o.log_prompts),
        webhook=WebhookRegistration(store, o.webhook_url) if o.webhook_url else None,
    )  # fmt: skip
    server = uvicorn.Server(uvicorn.Config(app, host=o.host, port=o.port, log_level="info"))
    return server


def serve(base: str, options: ServeOptions | None = None) -> None:
    """Serve every ``stage`` adapter registered for ``base`` until interrupted (``adapter-registry serve``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build_server(base, options).run()
