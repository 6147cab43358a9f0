"""One replica's serving state, and the course of one generation request, shared by the native API
(``serving.app``) and the OpenAI-compatible one (``serving.openai_api``).

A request is *admitted* (the server is not stopping; its adapter is served; its ``input`` fits the contract of the
version serving now), its adapter is *held resident* (loaded first if it is not: a cold start, see
``serving.residency``), it is *queued* (bounded: a full queue answers 429 with ``Retry-After``), then *awaited*
until its answer, its deadline (``--request-timeout``: 504, and it is dropped) or its client's disconnection (it is
dropped: never generated if it still waits, stopped at the next token if its batch runs). Whatever happens is
answered by a :class:`Refusal` (status, message, cause) that each API words its own way, counted in the metrics and
written to the request log.

While a canary of the adapter runs (``serving.canary``), a request is routed at admission: its key decides whether
the candidate answers it (or, with shadow, also runs on a copy after production answered), and both versions'
figures are kept; every answered request is kept for feedback for a while.

Nothing here waits on the model lock in the event loop: adapters are looked up in tables replaced whole, a cold
load runs in a worker thread, and the batcher's thread alone runs the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adapter_registry.contract import ContractError, MissingField
from adapter_registry.serving.batcher import Batcher, DeadlineExceeded, QueueFull, ShuttingDown, Ticket
from adapter_registry.serving.canary import (
    CANARY_SUFFIX,
    ERROR_REASONS,
    Answered,
    CanaryFigures,
    CanaryRoute,
    FeedbackBook,
    answer_key,
    in_answer_set,
)
from adapter_registry.serving.pool import (
    AdapterInfo,
    AdapterPool,
    Generation,
    Input,
    PoolError,
    PromptTooLong,
)
from adapter_registry.serving.residency import CapacityError, Residency

if TYPE_CHECKING:
    from starlette.requests import Request

    from adapter_registry.serving.metrics import ServingMetrics
    from adapter_registry.serving.request_log import RequestLog
    from adapter_registry.serving.sync import RegistrySync

__all__ = ["Call", "Refusal", "Service", "Stream", "provenance", "provenance_headers"]


class Refusal(Exception):
    """A request answered without a completion: HTTP status, message, cause (a metrics label), and for 429/503
    the seconds after which to retry."""

    def __init__(
        self, status: int, message: str, reason: str, retry_after: int | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.retry_after = retry_after
        self.param = param  # the request field at fault, when one is


def provenance(info: AdapterInfo | None, fingerprint: str) -> dict[str, Any]:
    """What answered a request: adapter (its registered name, also for a canary's candidate), version, weights
    digest, base fingerprint."""
    meta = info.metadata if info is not None else {}
    return {
        "adapter": meta.get("adapter", info.name) if info is not None else None,
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


@dataclass
class Call:
    """One generation request on its way: what it asked for, for the request log and the metrics."""

    api: str  # generate | completions | chat
    name: str  # the adapter asked for (a tenant's is resolved before)
    tenant: str | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.perf_counter)
    time: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"))
    label: str = ""  # the adapter as the metrics name it ("" for a name this server does not know)
    version: str = ""  # the version serving it when it was admitted (the answer names its own)
    target: str = ""  # the pool name that answers it: ``name``, or its canary's candidate ("NAME:canary")
    route: CanaryRoute | None = None  # the canary of its adapter running when it was admitted
    mirror: bool = False  # shadow: also run on the candidate, its answer only recorded
    prompt: Any = None  # what it asked (kept for a shadow copy)
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        self.target = self.target or self.name

    def record(self) -> dict[str, Any]:
        return {"time": self.time, "request_id": self.request_id, "api": self.api, "tenant": self.tenant,
                "adapter": self.name}  # fmt: skip

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 1)


@dataclass
class Service:
    """Everything one replica serves with; the routes of both APIs share it."""

    pool: AdapterPool
    sync: RegistrySync
    residency: Residency
    batcher: Batcher
    metrics: ServingMetrics
    tenants: dict[str, str]
    base: dict[str, str]
    poll_seconds: float
    requests: RequestLog
    request_timeout: float | None = 60.0
    webhook_secret: str = ""
    wake: threading.Event = field(default_factory=threading.Event)  # set: poll the registry now
    webhooks: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "rejected": 0})
    deliveries: dict[str, float] = field(default_factory=dict)  # delivery ids accepted (replays are refused)
    started: float = field(default_factory=time.time)
    in_flight: int = 0
    canary: CanaryFigures = field(default_factory=CanaryFigures)  # live figures of the canaries served
    feedback: FeedbackBook = field(default_factory=FeedbackBook)  # answered requests, for POST /v1/feedback
    replica: str = ""  # this replica's name in the fleet (host:port)
    _shadows: set[asyncio.Task[None]] = field(default_factory=set)  # shadow copies running

    # ------------------------------------------------------------------------------------ lookups
    def adapter_of(self, model: str) -> tuple[str, str | None]:
        """(adapter, tenant) for a name that is a tenant or an adapter (a tenant wins: it is the client's id)."""
        if model in self.tenants:
            return self.tenants[model], model
        return model, None

    def call(self, api: str, name: str, tenant: str | None, key: str | None = None) -> Call:
        """A request for ``name``, routed when its adapter runs a canary: ``key`` (X-Canary-Key, ``user``), else
        the tenant, else the request id decides which version answers it."""
        call = Call(api, name, tenant)
        if name.endswith(CANARY_SUFFIX):  # internal: requests reach a candidate only through its canary
            return call
        route = self.sync.canaries.get(name)
        if route is not None and self.residency.servable(route.slot) is not None:
            call.route = route
            if route.takes(key or tenant or call.request_id):
                call.mirror = route.shadow
                call.target = call.target if route.shadow else route.slot
        servable = self.residency.servable(call.target)
        known = servable is not None or name in self.sync.refused
        call.label = name if known else ""
        call.version = servable.metadata.get("version", "") if servable is not None else ""
        return call

    def problems(self) -> dict[str, tuple[int | None, str]]:
        return self.sync.problems()

    def refused(self, call: Call, refusal: Refusal) -> dict[str, str]:
        """Log and count a request answered without a completion; the headers its answer carries."""
        self.requests.write({**call.record(), "status": refusal.status, "error": refusal.message})
        self.metrics.refused(call.api, call.label, call.version, refusal.status, refusal.reason)
        if call.route is not None and call.version and refusal.reason in ERROR_REASONS:
            self.canary.failed(call.route, int(call.version))
        headers = {"X-Request-Id": call.request_id}
        if refusal.retry_after is not None:
            headers["Retry-After"] = str(refusal.retry_after)
        return headers

    def answered(self, call: Call, result: Generation, text: dict[str, Any]) -> dict[str, Any]:
        """Log and count an answered request; its provenance (adapter, version, digest, base fingerprint)."""
        facts = provenance(result.served_by, self.pool.fingerprint)
        latency_ms = call.elapsed_ms()
        self.requests.write(
            {**call.record(), **facts, "status": 200, "latency_ms": latency_ms,
             "prompt_tokens": result.prompt_tokens, "new_tokens": result.new_tokens},
            {**text, "prompt": result.prompt, "text": result.text},
        )  # fmt: skip
        self.metrics.answered(
            call.api, call.name, str(facts["version"] or ""), latency_ms / 1000, result.prompt_tokens,
            result.new_tokens,
        )  # fmt: skip
        contract = result.served_by.contract if result.served_by is not None else None
        key = answer_key(result.text, contract.answer_separator if contract else "")
        version = int(facts["version"] or 0)
        entry = Answered(call.name, version, key, call.route.canary_id if call.route else 0)
        self.feedback.add(call.request_id, entry)
        if call.route is not None:
            self.canary.answered(call.route, version, latency_ms, in_answer_set(result.text, contract))
            if call.mirror:
                task = asyncio.get_running_loop().create_task(self._shadow(call, call.route, entry))
                self._shadows.add(task)
                task.add_done_callback(self._shadows.discard)
        return {**facts, "latency_ms": latency_ms}

    async def _shadow(self, call: Call, route: CanaryRoute, primary: Answered) -> None:
        """Run a copy of an answered request on the canary's candidate; record its answer and whether it agrees
        with production's. Never seen by the client; skipped when the queue is full."""
        window = self.canary.window(route)
        window.mirrored += 1
        started = time.perf_counter()
        deadline = None if self.request_timeout is None else time.monotonic() + self.request_timeout
        try:
            if not self.residency.try_acquire(route.slot):
                await asyncio.to_thread(self.residency.acquire, route.slot, deadline)
        except Exception:
            self.canary.failed(route, route.version)
            return
        try:
            try:
                ticket = self.batcher.submit(route.slot, call.prompt, call.max_new_tokens, deadline=deadline)
            except (QueueFull, ShuttingDown):
                window.shadow_skipped += 1
                return
            try:
                result = await asyncio.wrap_future(ticket.future)
            except (asyncio.CancelledError, DeadlineExceeded, ShuttingDown):
                if not self.batcher.closing:
                    self.canary.failed(route, route.version)
                return
            except Exception:
                self.canary.failed(route, route.version)
                return
            contract = result.served_by.contract if result.served_by is not None else None
            version = int(result.served_by.metadata.get("version", 0)) if result.served_by else route.version
            key = answer_key(result.text, contract.answer_separator if contract else "")
            self.canary.answered(
                route, version, (time.perf_counter() - started) * 1000, in_answer_set(result.text, contract)
            )
            self.canary.agreed(route, version, key == primary.key)
            primary.shadow_version, primary.shadow_key = version, key
        finally:
            self.residency.release(route.slot)

    def begin_shutdown(self) -> None:
        """Refuse new work and answer the queued requests 503: the running batch finishes."""
        self.batcher.close()
        self.residency.close()

    # ------------------------------------------------------------------------------------ one request
    def admit(self, call: Call, value: str | Input) -> float | None:
        """Check that ``call`` can be served (Refusal otherwise); its deadline, a time.monotonic() value."""
        if self.batcher.closing:
            raise Refusal(503, "the server is shutting down; retry on another replica", "shutting_down", 1)
        if call.name.endswith(CANARY_SUFFIX):
            raise Refusal(
                404, f"adapter {call.name!r} is not served: a canary's candidate answers only through its "
                f"adapter's name ({call.name.removesuffix(CANARY_SUFFIX)!r})", "not_served",
            )  # fmt: skip
        servable = self.residency.servable(call.target)
        if servable is None and call.target != call.name:  # its canary ended a moment ago: production answers
            call.target = call.name
            servable = self.residency.servable(call.name)
        if servable is None:
            refused = self.sync.refused.get(call.name)
            if refused:
                raise Refusal(
                    409, f"adapter {call.name!r} version {refused[0]} is refused: {refused[1]}", "refused"
                )
            served = [s.name for s in self.residency.servables() if not s.name.endswith(CANARY_SUFFIX)]
            raise Refusal(404, f"adapter {call.name!r} is not served; served: {served}", "not_served")
        if isinstance(value, Input):  # checked now for a clear 422; rendered by the version that generates it
            contract = servable.info.contract
            try:
                if contract is None:
                    raise ContractError("this adapter has no serving contract; send a full prompt")
                contract.render(value.value, self.pool.tokenizer)  # no lock: a chat template is text (jinja)
            except MissingField as exc:
                raise Refusal(422, f"{exc} (field: {exc.field})", "bad_input", param=exc.field) from None
            except ContractError as exc:
                raise Refusal(422, str(exc), "bad_input") from None
        return None if self.request_timeout is None else time.monotonic() + self.request_timeout

    async def generate(
        self,
        call: Call,
        prompt: str | Input,
        max_new_tokens: int | None,
        request: Request | None,
        deadline: float | None,
    ) -> Generation:
        """The answer to an admitted request (Refusal when there is none)."""
        call.prompt, call.max_new_tokens = prompt, max_new_tokens
        await self._hold(call, request, deadline)
        self.in_flight += 1
        try:
            ticket = self._submit(call, prompt, max_new_tokens, deadline)
            waiter = asyncio.wrap_future(ticket.future)
            await self._until(waiter, ticket, call, request, deadline)
            return _result(waiter)
        finally:
            self.in_flight -= 1
            self.residency.release(call.target)

    async def stream(
        self,
        call: Call,
        prompt: str | Input,
        max_new_tokens: int | None,
        request: Request | None,
        deadline: float | None,
    ) -> Stream:
        """Start an admitted request and return once the version answering it is known (Refusal if it fails
        first): its text then arrives through the returned :class:`Stream`."""
        call.prompt, call.max_new_tokens = prompt, max_new_tokens
        await self._hold(call, request, deadline)
        self.in_flight += 1
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str] = asyncio.Queue()
        started: asyncio.Future[AdapterInfo | None] = loop.create_future()

        def later(callback: Any, *args: Any) -> None:  # from the batcher's thread
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
                loop.call_soon_threadsafe(callback, *args)

        def start(info: AdapterInfo | None) -> None:
            if not started.done():
                started.set_result(info)

        stream: Stream | None = None
        try:
            ticket = self._submit(
                call, prompt, max_new_tokens, deadline,
                on_start=lambda info: later(start, info), on_text=lambda text: later(pieces.put_nowait, text),
            )  # fmt: skip
            waiter = asyncio.wrap_future(ticket.future)
            await self._until(
                asyncio.ensure_future(_first_of(started, waiter)), ticket, call, request, deadline
            )
            if not started.done():  # the start comes before the result: it failed before it started
                _result(waiter)
            stream = Stream(self, call, ticket, waiter, pieces, started.result(), deadline)
            return stream
        finally:
            if stream is None:
                self.in_flight -= 1
                self.residency.release(call.target)

    # ------------------------------------------------------------------------------------ the steps
    async def _hold(self, call: Call, request: Request | None, deadline: float | None) -> None:
        """Hold the adapter resident for this request, loading it first in a worker thread if it is not."""
        if self.residency.try_acquire(call.target):
            return
        loading = asyncio.ensure_future(asyncio.to_thread(self.residency.acquire, call.target, deadline))
        try:
            await self._until(loading, None, call, request, deadline)
        except BaseException:  # a Refusal, or this request cancelled
            if not loading.done():  # the load goes on; give its slot back when it ends
                loading.add_done_callback(lambda t: self._release_if_held(t, call.target))
            raise
        try:
            loading.result()
        except ShuttingDown:
            raise Refusal(
                503, "the server is shutting down; retry on another replica", "shutting_down", 1
            ) from None
        except CapacityError as exc:
            raise Refusal(503, str(exc), "capacity", retry_after=1) from None
        except PoolError as exc:
            if self.residency.servable(call.target) is None:
                raise Refusal(404, f"adapter {call.name!r} is not served", "not_served") from None
            raise Refusal(
                503, f"adapter {call.name!r} could not be loaded: {exc}", "load_failed", 5
            ) from None

    def _release_if_held(self, task: asyncio.Future[None], name: str) -> None:
        if not task.cancelled() and task.exception() is None:
            self.residency.release(name)

    def _submit(
        self,
        call: Call,
        prompt: str | Input,
        max_new_tokens: int | None,
        deadline: float | None,
        **hooks: Any,
    ) -> Ticket:
        try:
            return self.batcher.submit(call.target, prompt, max_new_tokens, deadline=deadline, **hooks)
        except QueueFull as exc:
            raise Refusal(429, str(exc), "queue_full", exc.retry_after) from None
        except ShuttingDown as exc:
            raise Refusal(503, str(exc), "shutting_down", 1) from None

    async def _until(
        self,
        work: asyncio.Future[Any],
        ticket: Ticket | None,
        call: Call,
        request: Request | None,
        deadline: float | None,
    ) -> None:
        """Wait for ``work``, the deadline or the client's leaving, whichever comes first (Refusal for the last
        two; the ticket, if any, is cancelled: dropped, or stopped at its next token)."""
        gone = asyncio.ensure_future(_client_gone(request)) if request is not None else None
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            done, _ = await asyncio.wait(
                [work, gone] if gone is not None else [work], timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )  # fmt: skip
        except asyncio.CancelledError:  # the server gave up on this request (shutdown timeout)
            if ticket is not None:
                ticket.cancel("shutdown")
            raise
        finally:
            if gone is not None:
                gone.cancel()
        if work in done:
            return
        if gone is not None and gone in done:
            if ticket is not None:
                ticket.cancel("disconnected")
            raise Refusal(499, "the client closed the connection", "disconnected")
        if ticket is not None:
            ticket.cancel("deadline")
        raise Refusal(
            504, f"no answer within the request timeout ({self.request_timeout:g} s, --request-timeout); "
            "the request was dropped", "deadline",
        )  # fmt: skip


class Stream:
    """A started request's answer as it is generated: ``pieces`` yields its text; ``result`` is the final
    Generation. ``close`` (always called: the response ends, or its client left) drops the request if it is not
    finished and frees its adapter."""

    def __init__(
        self,
        service: Service,
        call: Call,
        ticket: Ticket,
        waiter: asyncio.Future[Generation],
        queue: asyncio.Queue[str],
        info: AdapterInfo | None,
        deadline: float | None,
    ) -> None:
        self.service = service
        self.call = call
        self.ticket = ticket
        self.waiter = waiter
        self.queue = queue
        self.info = info
        self.deadline = deadline
        self._closed = False

    async def pieces(self) -> AsyncIterator[str]:
        """The answer's text, piece by piece, until it is complete (Refusal if it fails or times out)."""
        while True:
            if self.waiter.done() and self.queue.empty():
                return
            getter: asyncio.Future[Any] = asyncio.ensure_future(self.queue.get())
            timeout = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
            try:
                done, _ = await asyncio.wait(
                    [getter, self.waiter], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                if not getter.done():
                    getter.cancel()
            if getter in done:
                yield getter.result()
                continue
            if not done:
                self.ticket.cancel("deadline")
                raise Refusal(504, "the answer did not complete within the request timeout", "deadline")

    def result(self) -> Generation:
        return _result(self.waiter)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.ticket.future.done():  # the client left before the end
            self.ticket.cancel("disconnected")
            self.service.refused(self.call, Refusal(499, "the client closed the stream", "disconnected"))
        self.service.in_flight -= 1
        self.service.residency.release(self.call.target)


async def _first_of(*futures: asyncio.Future[Any]) -> None:
    await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)


async def _client_gone(request: Request) -> None:
    """Returns when the client has closed the connection (the request body was read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _result(waiter: asyncio.Future[Generation]) -> Generation:
    """The batcher's answer, or the Refusal that says why there is none."""
    if waiter.cancelled():
        raise Refusal(499, "the request was cancelled", "disconnected")
    error = waiter.exception()
    if error is None:
        return waiter.result()
    if isinstance(error, PromptTooLong):
        raise Refusal(413, str(error), "too_long", param="prompt")
    if isinstance(error, ContractError):
        raise Refusal(422, str(error), "bad_input")
    if isinstance(error, PoolError):
        raise Refusal(404, str(error), "not_served")
    if isinstance(error, DeadlineExceeded):
        raise Refusal(504, str(error), "deadline")
    if isinstance(error, ShuttingDown):
        raise Refusal(503, str(error), "shutting_down", 1)
    raise Refusal(500, f"generation failed: {type(error).__name__}: {error}", "internal")
