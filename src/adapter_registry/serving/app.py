"""HTTP serving of every registered adapter of one stage on one base model (FastAPI): the routes.

    POST /v1/generate   {"adapter": NAME | "tenant": T, "prompt": str, "max_new_tokens": int}
    GET  /v1/adapters   what is served (name, version, fingerprint, size of its closed answer set) and what was
                        refused, with the reason
    GET  /health

Adapters come from an ``AdapterSource`` (``serving.sync``; the MLflow registry through ``AdapterStore``): the version of each
registered adapter that holds the stage (``production`` by default), if it was trained on the served base
(``ar.base.fingerprint``) for causal-LM generation; others are refused with a logged reason. A poller re-reads
the registry every ``poll_seconds``: when an alias moves, the new version is pulled (sha256-checked) and loaded
beside the old one, which keeps serving until the pool swaps the name over.

Concurrent requests are gathered by one worker thread (``serving.batcher``) into mixed batches (up to ``max_batch`` requests with the
same ``max_new_tokens``) and run through the pool's mixed-batch path. A prompt over ``max_prompt_tokens`` (2048 by
default: one long prompt would otherwise stall every request batched with it), or one that with its
``max_new_tokens`` overruns the base's context window, is answered 413 and the rest of its batch is served.

An adapter registered with a closed answer set (its recipe's ``evaluation.decoding: constrained``) is decoded
over that set, as it was evaluated, with the reply after its separator left free; the response says
``"constrained": true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapter_registry.serving.batcher import Batcher
from adapter_registry.serving.pool import AdapterPool, PoolError, PromptTooLong
from adapter_registry.serving.sync import AdapterSource, RegistrySource, RegistrySync

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

__all__ = ["build_server", "create_app", "serve"]

log = logging.getLogger("adapter_registry.serving")
DEFAULT_TENANTS = Path("conf/base/tenants.yml")


# ------------------------------------------------------------------------------------------------ HTTP
class GenerateRequest(BaseModel):
    """Body of POST /v1/generate: name an adapter or a tenant (mapped through conf/base/tenants.yml)."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(default=None, description="registered adapter name")
    tenant: str | None = Field(default=None, description="tenant id, mapped to an adapter by tenants.yml")
    prompt: str = Field(min_length=1, description="the full prompt; no chat template is applied")
    max_new_tokens: int = Field(default=32, ge=1, le=512, description="greedy decoding length")

    @model_validator(mode="after")
    def _one_target(self) -> GenerateRequest:
        if (self.adapter is None) == (self.tenant is None):
            raise ValueError("name exactly one of 'adapter' or 'tenant'")
        return self


class TenantsFile(BaseModel):
    """conf/base/tenants.yml."""

    model_config = ConfigDict(extra="forbid")

    tenants: dict[str, str] = Field(default_factory=dict, description="tenant id -> registered adapter name")


def load_tenants(path: Path | None) -> dict[str, str]:
    """Tenant → adapter mapping; {} when ``path`` is None or the default file is absent."""
    import yaml

    if path is None:
        if not DEFAULT_TENANTS.is_file():
            return {}
        path = DEFAULT_TENANTS
    try:
        return TenantsFile.model_validate(yaml.safe_load(Path(path).read_text()) or {}).tenants
    except (OSError, ValueError) as exc:
        raise ValueError(f"tenants file {str(path)!r}: {exc}") from exc


@dataclass
class _Service:
    pool: AdapterPool
    sync: RegistrySync
    batcher: Batcher
    tenants: dict[str, str]
    base: dict[str, str]
    poll_seconds: float
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
) -> FastAPI:
    """The FastAPI app: syncs with ``source`` at start-up, then every ``poll_seconds`` in a thread."""
    from fastapi import FastAPI, HTTPException

    service = _Service(
        pool=pool,
        sync=RegistrySync(pool, source, pool.fingerprint),
        batcher=Batcher(pool, max_batch=max_batch),
        tenants=dict(tenants or {}),
        base={"identity": base_identity, "fingerprint": pool.fingerprint, "stage": stage},
        poll_seconds=poll_seconds,
    )
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(service.poll_seconds):
            service.sync.sync()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(service.sync.sync)
        service.batcher.start()
        poller = threading.Thread(target=poll, name="registry-poller", daemon=True)
        poller.start()
        log.info("serving %d adapters on %s (%s)", len(pool), base_identity, pool.fingerprint)
        yield
        stop.set()
        poller.join(timeout=60)
        service.batcher.stop()

    app = FastAPI(title="adapter-registry serving", lifespan=lifespan)
    app.state.service = service

    @app.post("/v1/generate")
    async def generate(body: GenerateRequest) -> dict[str, Any]:
        name = body.adapter
        if body.tenant is not None:
            name = service.tenants.get(body.tenant)
            if name is None:
                raise HTTPException(404, f"tenant {body.tenant!r} has no adapter in the tenants file")
        assert name is not None
        if name not in pool:
            refused = service.sync.refused.get(name)
            if refused:
                raise HTTPException(409, f"adapter {name!r} version {refused[0]} is refused: {refused[1]}")
            raise HTTPException(
                404, f"adapter {name!r} is not served; served: {[a.name for a in pool.adapters()]}"
            )
        started = time.perf_counter()
        try:
            result = await asyncio.wrap_future(service.batcher.submit(name, body.prompt, body.max_new_tokens))
        except PromptTooLong as exc:
            raise HTTPException(413, str(exc)) from exc
        except PoolError as exc:
            raise HTTPException(404, str(exc)) from exc
        info = result.served_by
        return {
            "adapter": name,
            "tenant": body.tenant,
            "version": int(info.metadata["version"]) if info and "version" in info.metadata else None,
            "text": result.text,
            "constrained": result.constrained,
            "prompt_tokens": result.prompt_tokens,
            "new_tokens": result.new_tokens,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        }

    @app.get("/v1/adapters")
    def adapters() -> dict[str, Any]:
        stale = service.sync.stale()  # served by an older version: the stage holder was refused or failed
        served = [
            {
                "name": a.name, "version": int(a.metadata.get("version", 0)) or None,
                "fingerprint": a.metadata.get("fingerprint", ""), "loaded_at": a.metadata.get("loaded_at"),
                "layers": a.layers, "ranks": list(a.ranks), "bytes": a.nbytes, "answers": a.answers,
                "stage_holder": stale.get(a.name, int(a.metadata.get("version", 0)) or None),
            }
            for a in pool.adapters()
        ]  # fmt: skip
        refused = [
            {"name": n, "version": v, "reason": r} for n, (v, r) in sorted(service.sync.refused.items())
        ]
        failed = [{"name": n, "version": v, "error": e} for n, (v, e) in sorted(service.sync.failed.items())]
        return {"base": service.base, "adapters": served, "refused": refused, "failed": failed}

    @app.get("/health")
    def health() -> dict[str, Any]:
        sync = service.sync
        return {
            "status": "ok" if sync.last_error is None else "degraded",
            "base": service.base,
            "adapters": len(pool),
            "last_sync": sync.last_sync.isoformat(timespec="seconds") if sync.last_sync else None,
            "last_sync_error": sync.last_error,
            "batches": service.batcher.batches,
            "largest_batch": service.batcher.largest_batch,
            "uptime_s": round(time.time() - service.started, 1),
        }

    return app


def build_server(
    base: str,
    stage: str = "production",
    host: str = "127.0.0.1",
    port: int = 8000,
    tracking_uri: str | None = None,
    poll_seconds: float = 10.0,
    tenants_file: Path | None = None,
    max_batch: int = 8,
    max_prompt_tokens: int | None = 2048,
) -> uvicorn.Server:
    """Load the base, connect the registry and return the (not yet started) uvicorn server."""
    import uvicorn

    from adapter_registry.bases.resolve import resolve_reference
    from adapter_registry.registry.entities import PROMOTION_STAGES
    from adapter_registry.registry.store import AdapterStore

    if stage not in (*PROMOTION_STAGES, "candidate"):
        raise ValueError(f"stage {stage!r} cannot be served; use production, staging or candidate")
    resolved = resolve_reference(base)
    store = AdapterStore(tracking_uri) if tracking_uri else AdapterStore.from_env()
    pool = AdapterPool.from_pretrained(
        resolved.path, fingerprint=resolved.fingerprint, max_prompt_tokens=max_prompt_tokens
    )
    app = create_app(
        pool, RegistrySource(store, stage), base_identity=resolved.identity, stage=stage,
        tenants=load_tenants(tenants_file), poll_seconds=poll_seconds, max_batch=max_batch,
    )  # fmt: skip
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info"))


def serve(
    base: str,
    stage: str = "production",
    host: str = "127.0.0.1",
    port: int = 8000,
    tracking_uri: str | None = None,
    poll_seconds: float = 10.0,
    tenants_file: Path | None = None,
    max_batch: int = 8,
    max_prompt_tokens: int | None = 2048,
) -> None:
    """Serve every ``stage`` adapter registered for ``base`` until interrupted (``adapter-registry serve``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build_server(
        base, stage, host, port, tracking_uri, poll_seconds, tenants_file, max_batch, max_prompt_tokens
    ).run()
