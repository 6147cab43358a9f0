"""Mixed batches: one worker thread gathers concurrent requests for any adapters into batches for the pool.

Requests are grouped by their answer budget (``max_new_tokens``; None: each adapter's contract's). A batch that
fails is retried row by row, so one bad row (too long, not fitting its contract) fails alone.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass, field

from adapter_registry.contract import ContractError
from adapter_registry.serving.pool import AdapterPool, Generation, Input, PoolError, PromptTooLong

__all__ = ["Batcher"]


@dataclass
class _Request:
    adapter: str
    prompt: str | Input
    max_new_tokens: int | None  # None: the adapter's serving contract's
    future: concurrent.futures.Future[Generation] = field(default_factory=concurrent.futures.Future)


class Batcher:
    """One worker thread: gathers waiting requests into mixed batches of equal ``max_new_tokens``."""

    def __init__(self, pool: AdapterPool, max_batch: int = 8, wait_s: float = 0.005) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._held: list[_Request] = []  # taken from the queue, waiting for a batch of their length
        self.batches = 0
        self.largest_batch = 0
        self._thread = threading.Thread(target=self._run, name="adapter-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def submit(
        self, adapter: str, prompt: str | Input, max_new_tokens: int | None = None
    ) -> concurrent.futures.Future[Generation]:
        request = _Request(adapter, prompt, max_new_tokens)
        self._queue.put(request)
        return request.future

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._generate(batch)

    def _next_batch(self) -> list[_Request] | None:
        if not self._held:
            first = self._queue.get()
            if first is None:
                return None
            self._held.append(first)
        deadline = time.monotonic() + self.wait_s
        while len(self._held) < 4 * self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            self._held.append(item)
        length = self._held[0].max_new_tokens
        batch = [r for r in self._held if r.max_new_tokens == length][: self.max_batch]
        self._held = [r for r in self._held if r not in batch]
        return batch

    def _generate(self, batch: list[_Request]) -> None:
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        try:
            results = self.pool.generate(
                [r.prompt for r in batch], [r.adapter for r in batch], batch[0].max_new_tokens
            )
        except (PoolError, ContractError) as exc:
            # alone in its batch: its prompt is too long or does not fit its contract, or its adapter left the
            # pool since it was accepted
            if len(batch) == 1:
                gone = PoolError(f"adapter {batch[0].adapter!r} is no longer served")
                keep = isinstance(exc, PromptTooLong | ContractError)
                batch[0].future.set_exception(exc if keep else gone)
                return
            for request in batch:  # one bad row must not fail the others
                self._generate([request])
            return
        except Exception as exc:
            for request in batch:
                request.future.set_exception(exc)
            return
        for request, result in zip(batch, results, strict=True):
            request.future.set_result(result)
