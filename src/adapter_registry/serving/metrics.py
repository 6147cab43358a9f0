"""Operators' metrics of one ``serve`` replica, in Prometheus' text format (``GET /metrics``, prometheus-client).

Per adapter and version: requests by API and HTTP status, errors by cause, latency (histogram), prompt and new
tokens (``rate(adapter_registry_generated_tokens_total[1m])`` is tokens/s), loads (cold, eager, pinned, swap)
and their duration, evictions. Per replica: servable and resident adapters, the resident limit, queue depth and
capacity, requests in flight, batches and rows generated, work dropped (deadline, client gone, shutdown), and one
``adapter_registry_adapter_info`` line per servable adapter naming its version, digest and whether it is resident.

Adapter labels only ever hold names the server serves (or refused): a request naming anything else is counted
under ``adapter=""``, so a client cannot grow the label set. Each app has its own registry (several servers may
run in one process, as in the tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from adapter_registry.serving.pool import AdapterInfo

__all__ = ["CONTENT_TYPE_LATEST", "ServingMetrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2.5, 5, 10)


class ServingMetrics:
    """The metric objects of one server; the routes, the residency and the batcher report into it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        by_version = ["adapter", "version"]
        self.requests = Counter(
            "adapter_registry_requests", "Requests answered, by adapter, version, API and HTTP status",
            [*by_version, "api", "status"], registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "adapter_registry_request_errors",
            "Requests answered without a completion, by cause (queue_full, deadline, disconnected, "
            "shutting_down, capacity, load_failed, not_served, refused, bad_input, too_long, internal)",
            [*by_version, "reason"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "adapter_registry_request_latency_seconds", "Latency of answered requests (status 200), seconds",
            by_version, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "adapter_registry_prompt_tokens", "Prompt tokens of answered requests", by_version, registry=r
        )
        self.new_tokens = Counter(
            "adapter_registry_generated_tokens", "New tokens generated for answered requests", by_version,
            registry=r,
        )  # fmt: skip
        self.loads = Counter(
            "adapter_registry_adapter_loads",
            "Adapter versions loaded into the pool, by cause (cold: on a request; eager or pinned: when "
            "offered; swap: a new version of a resident adapter)",
            [*by_version, "cause"], registry=r,
        )  # fmt: skip
        self.load_seconds = Histogram(
            "adapter_registry_adapter_load_seconds",
            "Time to load an adapter from the local cache (checksums, read, install), seconds",
            ["cause"], buckets=LOAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.evictions = Counter(
            "adapter_registry_adapter_evictions", "Adapters unloaded to make room for another", by_version,
            registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "adapter_registry_requests_in_flight", "Generation requests being answered now", registry=r
        )
        self._live = _Live()
        r.register(self._live)

    def bind(
        self,
        servable: Callable[[], list[tuple[str, str, str, bool]]],
        max_resident: int | None,
        queue: Callable[[], dict[str, Any]],
    ) -> None:
        """Where the live figures are read at each scrape: the servable adapters as (name, version, digest,
        resident), the resident limit, and the batcher's figures (``Batcher.figures``)."""
        self._live.servable = servable
        self._live.max_resident = max_resident
        self._live.queue = queue

    # ------------------------------------------------------------------------------------ reports
    def answered(
        self, api: str, adapter: str, version: str, seconds: float, prompt_tokens: int, new_tokens: int
    ) -> None:
        self.requests.labels(adapter, version, api, "200").inc()
        self.latency.labels(adapter, version).observe(seconds)
        self.prompt_tokens.labels(adapter, version).inc(prompt_tokens)
        self.new_tokens.labels(adapter, version).inc(new_tokens)

    def refused(self, api: str, adapter: str, version: str, status: int, reason: str) -> None:
        self.requests.labels(adapter, version, api, str(status)).inc()
        self.errors.labels(adapter, version, reason).inc()

    def loaded(self, info: AdapterInfo, cause: str, seconds: float) -> None:
        self.loads.labels(info.name, info.metadata.get("version", ""), cause).inc()
        self.load_seconds.labels(cause).observe(seconds)

    def evicted(self, name: str, version: int | None) -> None:
        self.evictions.labels(name, "" if version is None else str(version)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Live(Collector):
    """Figures read when scraped: adapters servable and resident, the queue, batches and dropped work."""

    def __init__(self) -> None:
        self.servable: Callable[[], list[tuple[str, str, str, bool]]] = list
        self.max_resident: int | None = None
        self.queue: Callable[[], dict[str, Any]] = dict

    def collect(self) -> Iterator[Any]:
        servable = self.servable()
        info = GaugeMetricFamily(
            "adapter_registry_adapter_info", "One per servable adapter: its version, weights digest, residency",
            labels=["adapter", "version", "digest", "resident"],
        )  # fmt: skip
        for name, version, digest, resident in servable:
            info.add_metric([name, version, digest, "true" if resident else "false"], 1)
        yield info
        yield GaugeMetricFamily(
            "adapter_registry_servable_adapters",
            "Adapters this replica serves (resident or not)",
            len(servable),
        )
        yield GaugeMetricFamily(
            "adapter_registry_resident_adapters", "Adapters loaded in the pool now",
            sum(1 for *_, resident in servable if resident),
        )  # fmt: skip
        if self.max_resident is not None:
            yield GaugeMetricFamily(
                "adapter_registry_max_resident_adapters",
                "The resident limit (--max-resident)",
                self.max_resident,
            )
        figures = self.queue()
        if not figures:
            return
        yield GaugeMetricFamily(
            "adapter_registry_queue_depth", "Requests waiting for a batch", figures["depth"]
        )
        if figures.get("capacity") is not None:
            yield GaugeMetricFamily(
                "adapter_registry_queue_capacity",
                "Requests the queue holds (--max-queue)",
                figures["capacity"],
            )
        yield CounterMetricFamily("adapter_registry_batches", "Batches generated", figures["batches"])
        yield CounterMetricFamily(
            "adapter_registry_generated_rows",
            "Rows handed to the model (requests generated)",
            figures["rows"],
        )
        dropped = CounterMetricFamily(
            "adapter_registry_dropped_requests",
            "Requests dropped before generation (queued) or stopped during it, by cause",
            labels=["reason", "when"],
        )  # fmt: skip
        for (reason, when), count in sorted(figures["dropped"].items()):
            dropped.add_metric([reason, when], count)
        yield dropped
