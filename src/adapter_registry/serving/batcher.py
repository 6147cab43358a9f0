"""Mixed batches: one worker thread gathers concurrent requests for any adapters into batches for the pool, with
admission control.

Requests are grouped by their answer budget (``max_new_tokens``; None: each adapter's contract's). A batch that
fails is retried row by row, so one bad row (too long, not fitting its contract) fails alone.

The queue is bounded (``max_queue`` waiting requests): a request beyond it is refused at once with
:class:`QueueFull`, which says when to retry. A request carries a deadline and may be cancelled (its client left):
one abandoned while it waits is dropped without being generated; one abandoned while its batch runs stops
generating at the next token. ``close`` (shutdown) refuses new requests and answers the waiting ones with
:class:`ShuttingDown`; the batch running finishes.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adapter_registry.contract import ContractError
from adapter_registry.serving.pool import (
    AdapterInfo,
    AdapterPool,
    Generation,
    Input,
    PoolError,
    PromptTooLong,
    RowHooks,
)

__all__ = ["Batcher", "DeadlineExceeded", "QueueFull", "ShuttingDown", "Ticket"]


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` requests already; ``retry_after`` (seconds) estimates when it drains."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed before it was answered."""


class ShuttingDown(RuntimeError):
    """The server is stopping: no new work is taken."""


@dataclass
class Ticket:
    """One request in the batcher: its result arrives in ``future``; ``cancel`` drops it (not generated if it is
    still waiting, stopped at the next token if its batch runs)."""

    adapter: str
    prompt: str | Input
    max_new_tokens: int | None  # None: the adapter's serving contract's
    deadline: float | None = None  # time.monotonic() after which nobody waits for it
    on_start: Callable[[AdapterInfo | None], None] | None = None
    on_text: Callable[[str], None] | None = None
    future: concurrent.futures.Future[Generation] = field(default_factory=concurrent.futures.Future)
    reason: str = ""  # why it was cancelled
    started: bool = False  # its batch reached the model

    def cancel(self, reason: str) -> None:
        self.reason = self.reason or reason
        self.future.cancel()

    def abandoned(self) -> bool:
        return self.future.cancelled() or (self.deadline is not None and time.monotonic() > self.deadline)

    def _start(self, info: AdapterInfo | None) -> None:
        self.started = True
        if self.on_start is not None:
            self.on_start(info)


class Batcher:
    """One worker thread: gathers waiting requests into mixed batches of equal ``max_new_tokens``."""

    def __init__(
        self, pool: AdapterPool, max_batch: int = 8, wait_s: float = 0.005, max_queue: int | None = None
    ) -> None:
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"--max-queue {max_queue} must be at least 1 (or left out: no limit)")
        self.pool = pool
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.max_queue = max_queue
        self._waiting: list[Ticket] = []
        self._cond = threading.Condition()
        self._closing = False
        self.batches = 0
        self.largest_batch = 0
        self.rows = 0  # rows handed to the model
        self.dropped: Counter[tuple[str, str]] = Counter()  # (reason, "queued" | "generating") -> requests
        self._batch_s = 0.5  # running mean of a batch's duration, for Retry-After
        self._thread = threading.Thread(target=self._run, name="adapter-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Refuse new requests and answer the waiting ones with ShuttingDown; the running batch finishes."""
        with self._cond:
            self._closing = True
            waiting, self._waiting = self._waiting, []
            self._cond.notify_all()
        for ticket in waiting:
            if not ticket.abandoned():
                self.dropped["shutdown", "queued"] += 1
            _settle(ticket, error=ShuttingDown("the server is shutting down; retry on another replica"))

    def stop(self, timeout: float = 10.0) -> None:
        self.close()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    @property
    def closing(self) -> bool:
        return self._closing

    def submit(
        self,
        adapter: str,
        prompt: str | Input,
        max_new_tokens: int | None = None,
        *,
        deadline: float | None = None,
        on_start: Callable[[AdapterInfo | None], None] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Ticket:
        """Queue one request. Raises QueueFull (with a retry estimate) or ShuttingDown."""
        ticket = Ticket(adapter, prompt, max_new_tokens, deadline, on_start, on_text)
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down; retry on another replica")
            if self.max_queue is not None and len(self._waiting) >= self.max_queue:
                self._prune()
                if len(self._waiting) >= self.max_queue:
                    raise QueueFull(
                        f"the queue is full ({self.max_queue} requests waiting, --max-queue); retry later",
                        self.retry_after(),
                    )
            self._waiting.append(ticket)
            self._cond.notify_all()
        return ticket

    def retry_after(self) -> int:
        """Seconds until the waiting requests are likely served (at least 1)."""
        return max(1, math.ceil(len(self._waiting) / self.max_batch * self._batch_s))

    def figures(self) -> dict[str, Any]:
        """Queue depth (requests waiting that someone still waits for) and capacity, batches, rows generated and
        requests dropped (for /health and /metrics)."""
        waiting = list(self._waiting)
        return {
            "depth": sum(not t.abandoned() for t in waiting), "capacity": self.max_queue, "batches": self.batches,
            "largest_batch": self.largest_batch, "rows": self.rows, "dropped": dict(self.dropped),
        }  # fmt: skip

    # ------------------------------------------------------------------------------------ the worker
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            started = time.perf_counter()
            self._generate(batch)
            self._batch_s = 0.8 * self._batch_s + 0.2 * (time.perf_counter() - started)

    def _next_batch(self) -> list[Ticket] | None:
        with self._cond:
            while True:
                self._prune()
                if not self._waiting:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                gather_until = time.monotonic() + self.wait_s  # let concurrent requests join the batch
                while len(self._waiting) < self.max_batch and not self._closing:
                    remaining = gather_until - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                self._prune()
                if not self._waiting:
                    continue
                length = self._waiting[0].max_new_tokens
                batch = [t for t in self._waiting if t.max_new_tokens == length][: self.max_batch]
                chosen = {id(t) for t in batch}
                self._waiting = [t for t in self._waiting if id(t) not in chosen]
                return batch

    def _prune(self) -> None:
        """Drop the waiting requests nobody waits for (call under the lock): they are never generated."""
        kept = []
        for ticket in self._waiting:
            if ticket.abandoned():
                self._drop(ticket, "queued")
            else:
                kept.append(ticket)
        self._waiting = kept

    def _drop(self, ticket: Ticket, when: str) -> None:
        reason = ticket.reason or ("deadline" if not ticket.future.cancelled() else "cancelled")
        self.dropped[reason, when] += 1
        _settle(ticket, error=DeadlineExceeded("the request's deadline passed before it was answered"))

    def _generate(self, batch: list[Ticket]) -> None:
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        hooks = [RowHooks(on_start=t._start, on_text=t.on_text, abandoned=t.abandoned) for t in batch]
        try:
            results = self.pool.generate(
                [t.prompt for t in batch], [t.adapter for t in batch], batch[0].max_new_tokens, hooks=hooks
            )
        except (PoolError, ContractError) as exc:
            # raised before anything ran; alone in its batch: its prompt is too long or does not fit its contract,
            # or its adapter left the pool since it was accepted
            if len(batch) == 1:
                gone = PoolError(f"adapter {batch[0].adapter!r} is no longer served")
                keep = isinstance(exc, PromptTooLong | ContractError)
                _settle(batch[0], error=exc if keep else gone)
                return
            for ticket in batch:  # one bad row must not fail the others
                if ticket.abandoned():
                    self._drop(ticket, "queued")
                else:
                    self._generate([ticket])
            return
        except Exception as exc:
            self.rows += len(batch)
            for ticket in batch:
                _settle(ticket, error=exc)
            return
        self.rows += len(batch)
        for ticket, result in zip(batch, results, strict=True):
            if ticket.abandoned():
                self._drop(ticket, "generating")
            else:
                _settle(ticket, result=result)


def _settle(ticket: Ticket, result: Generation | None = None, error: BaseException | None = None) -> None:
    """Give a request its result or error, unless it was cancelled meanwhile."""
    try:
        if error is not None:
            ticket.future.set_exception(error)
        else:
            ticket.future.set_result(result)  # type: ignore[arg-type]
    except concurrent.futures.InvalidStateError:
        pass  # cancelled: nobody waits for it
