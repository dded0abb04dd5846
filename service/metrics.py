"""Prometheus metrics: HTTP requests of this API process, and jobs of all workers.

Workers count finished jobs and their durations in Redis (see `jobstate.store`), in the
same atomic step that records the outcome; this module reads those counters at scrape
time, so every API process exposes the same totals, counted once each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobstate.store import FINAL_STATUSES, JOB_DURATION_BUCKETS_S, Store

logger = logging.getLogger(__name__)


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "nnkgeo_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "nnkgeo_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ["route", "method"],
            registry=registry,
        )


class HttpMetricsMiddleware:
    """Counts every request by its route template (`/v1/jobs/{job_id}`), never its path."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            # The router writes the matched route into this same scope; unmatched paths
            # share one label so that scanners cannot blow up the series count.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.duration.labels(route, method).observe(time.perf_counter() - started)


class JobMetricsCollector(Collector):
    def __init__(self, store: Store, *, queues: Sequence[str]) -> None:
        self._store = store
        self._queues = list(queues)

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        try:
            job_metrics = self._store.job_metrics()
            queue_lengths = self._store.queue_lengths(self._queues)
        except redis.RedisError as error:
            logger.warning("metrics: Redis did not answer: %s", error)
            up = GaugeMetricFamily("nnkgeo_store_up", "1 when Redis answered this scrape.")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("nnkgeo_store_up", "1 when Redis answered this scrape.")
        up.add_metric([], 1)
        yield up

        submitted = CounterMetricFamily(
            "nnkgeo_jobs_submitted", "Jobs queued, by queue.", labels=["queue"]
        )
        for queue, count in sorted(job_metrics.submitted.items()):
            submitted.add_metric([queue], count)
        yield submitted

        cache_hits = CounterMetricFamily(
            "nnkgeo_jobs_cache_hits", "Jobs answered from the result cache."
        )
        cache_hits.add_metric([], job_metrics.cache_hits)
        yield cache_hits

        finished = CounterMetricFamily(
            "nnkgeo_jobs_finished", "Jobs finished, by final status.", labels=["status"]
        )
        for status in FINAL_STATUSES:
            finished.add_metric([status.value], job_metrics.finished.get(status.value, 0))
        yield finished

        durations = HistogramMetricFamily(
            "nnkgeo_job_duration_seconds",
            "Run time of jobs that started, from first start to final status.",
            labels=["status"],
        )
        for status in FINAL_STATUSES:
            histogram = job_metrics.durations[status.value]
            cumulative = 0
            buckets = []
            for upper in JOB_DURATION_BUCKETS_S:
                cumulative += histogram.bucket_counts.get(str(upper), 0)
                buckets.append((str(float(upper)), cumulative))
            cumulative += histogram.bucket_counts.get("+Inf", 0)
            buckets.append(("+Inf", cumulative))
            durations.add_metric([status.value], buckets, histogram.total_s)
        yield durations

        queued = GaugeMetricFamily(
            "nnkgeo_queue_length", "Messages waiting in each Celery queue.", labels=["queue"]
        )
        for queue, length in queue_lengths.items():
            queued.add_metric([queue], length)
        yield queued
