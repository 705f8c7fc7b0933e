"""Prometheus metrics on GET /metrics (SPEC 6).

Two sources:
- this api process's own counters (pushes by outcome, records accepted and
  rejected by type, request durations), with prometheus-client; several api
  processes on one host share them through its multiprocess mode when
  PROMETHEUS_MULTIPROC_DIR is set;
- the shared state, read from Redis at scrape time: queue depth and lag,
  failed and retrying batches, busy and idle workers, and what the workers
  wrote (queueing/stats.py). These are right however many workers run, wherever.
  Every api reads the same values, so each such series carries `scope="shared"`:
  with several apis behind a load balancer, a dashboard takes one of them
  (`max by (type) (...)`, never `sum`), while this process's own counters are
  summed across instances as usual (deploy/grafana, deploy/alerts.yml).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from queueing import stats
from queueing.queue_state import QueueState
from runtime.version import VERSION
from spool.store import SpoolStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NS = "selftune_ingest"

PUSHES = Counter(f"{NS}_pushes", "Push requests by outcome and HTTP status", ["outcome", "code"])
RECORDS_ACCEPTED = Counter(f"{NS}_records_accepted", "Records accepted by the api, by type", ["type"])
RECORDS_REJECTED = Counter(f"{NS}_records_rejected", "Records failing validation at the api, by type", ["type"])
SPOOLED = Counter(
    f"{NS}_spooled_batches",
    "Pushes written to this api's local spool, by how the enqueue went (not_tried, refused, unconfirmed)",
    ["enqueue"],
)
for _enqueue in ("not_tried", "refused", "unconfirmed"):
    SPOOLED.labels(_enqueue)  # exported as 0 from the start, so a rate() sees the first one
SPOOL_DRAINED = Counter(
    f"{NS}_spool_drained_batches", "Spooled batches moved into the queue, by outcome (queued, duplicate)", ["outcome"]
)
SPOOL_REFUSED = Counter(
    f"{NS}_refused_pushes",
    "Pushes refused (503) because neither Redis nor the spool could hold them, by cause",
    ["cause"],
)
UNHANDLED_ERRORS = Counter(f"{NS}_unhandled_errors", "Requests that ended in an unhandled exception (500)", ["route"])
REQUEST_SECONDS = Histogram(
    f"{NS}_request_duration_seconds",
    "Time to answer a push",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


class BuildInfoCollector(Collector):
    """`selftune_ingest_build_info{version=...} 1`: which build answers (one value per process, the same)."""

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(f"{NS}_build_info", "This build (always 1), by version", labels=["version"])
        info.add_metric([VERSION], 1)
        yield info


_BUILD = CollectorRegistry(auto_describe=False)
_BUILD.register(BuildInfoCollector())
BUILD_INFO_TEXT = generate_latest(_BUILD)


SCOPE = "scope"
SHARED = "shared"  # the value of `scope` on every series read from Redis: the same on every api


def _shared_gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[SCOPE])
    family.add_metric([SHARED], value)
    return family


class SharedStateCollector(Collector):
    """Metric families built from one Redis read (queue snapshot and worker counters), all `scope="shared"`."""

    def __init__(self, state: QueueState, hashes: dict[str, dict[bytes, bytes]]) -> None:
        self.state = state
        self.hashes = hashes

    def collect(self) -> Iterator[Metric]:
        s = self.state
        yield _shared_gauge(f"{NS}_queue_batches", "Batches waiting in the queue", s.depth)
        yield _shared_gauge(f"{NS}_queue_lag_seconds", "Age of the oldest queued batch", s.lag_s)
        yield from self._by_shard()
        yield _shared_gauge(f"{NS}_failed_batches", "Batches in RQ's failed registry", s.failed)
        yield _shared_gauge(f"{NS}_retrying_batches", "Batches waiting for a retry", s.scheduled)
        yield _shared_gauge(f"{NS}_started_batches", "Batches being written", s.started)
        yield _shared_gauge(
            f"{NS}_stalled_batches", "Started batches whose worker died (claim lapsed), awaiting retry", s.stalled
        )
        workers = GaugeMetricFamily(f"{NS}_workers", "Workers by state", labels=["state", SCOPE])
        workers.add_metric(["busy", SHARED], s.workers_busy)
        workers.add_metric(["idle", SHARED], s.workers_idle)
        workers.add_metric(["suspended", SHARED], s.workers_suspended)
        yield workers
        yield self._by_label(stats.WRITTEN, f"{NS}_records_written", "Records written to Postgres, by type", "type")
        yield self._by_label(
            stats.QUARANTINED, f"{NS}_records_quarantined", "Records stored in quarantine, by type", "type"
        )
        yield self._by_label(stats.BATCHES, f"{NS}_batches", "Batches handled by workers, by outcome", "outcome")
        yield self._write_histogram()
        yield from self._retention()

    def _by_shard(self) -> Iterator[Metric]:
        """Each shard's depth and lag (QUEUE_SHARDS, queueing/shards.py): one busy workspace shows as one busy shard."""
        depth = GaugeMetricFamily(
            f"{NS}_queue_shard_batches", "Batches waiting in each shard's queue", labels=["shard", SCOPE]
        )
        lag = GaugeMetricFamily(
            f"{NS}_queue_shard_lag_seconds", "Age of the oldest batch in each shard's queue", labels=["shard", SCOPE]
        )
        for shard in self.state.shards:
            depth.add_metric([shard.shard, SHARED], shard.depth)
            lag.add_metric([shard.shard, SHARED], shard.lag_s)
        yield depth
        yield lag

    def _by_label(self, key: str, name: str, doc: str, label: str) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=[label, SCOPE])
        for k, v in sorted(self.hashes.get(key, {}).items()):
            family.add_metric([k.decode(), SHARED], float(v))
        return family

    def _retention(self) -> Iterator[Metric]:
        """The last `maintain`'s figures a table (ops/maintain.py publishes them), and its running totals."""
        tables = stats.parse_retention(self.hashes.get(stats.RETENTION, {}))
        gauges = {
            "retention_days": ("Days a table's rows are kept (0: forever)", "retention_days"),
            "retention_partitions": ("Range partitions of a table partitioned by time", "partitions"),
            "retention_partitions_ahead": ("Partitions made ahead of the current period", "partitions_ahead"),
            "retention_default_rows": ("Rows in a table's default partition (no range covers them)", "default_rows"),
        }
        for name, (doc, field) in gauges.items():
            family = GaugeMetricFamily(f"{NS}_{name}", doc, labels=["table", SCOPE])
            for t in tables:
                if field in ("retention_days",) or t["partitioned"]:
                    family.add_metric([t["table"], SHARED], float(t[field]))
            yield family
        last = GaugeMetricFamily(
            f"{NS}_retention_last_run_timestamp_seconds", "When maintain last ran over a table", labels=["table", SCOPE]
        )
        for t in tables:
            last.add_metric([t["table"], SHARED], datetime.fromisoformat(t["ran_at"]).timestamp())
        yield last
        yield self._by_label(
            stats.RETENTION_DELETED, f"{NS}_retention_deleted_rows", "Rows deleted by maintain, by table", "table"
        )
        yield self._by_label(
            stats.RETENTION_DROPPED,
            f"{NS}_retention_dropped_partitions",
            "Partitions dropped by maintain, by table",
            "table",
        )

    def _write_histogram(self) -> HistogramMetricFamily:
        raw = {k.decode(): float(v) for k, v in self.hashes.get(stats.WRITE_SECONDS, {}).items()}
        buckets, running = [], 0.0
        for le in [*(repr(b) for b in stats.WRITE_BUCKETS_S), "+Inf"]:
            running += raw.get(le, 0.0)
            buckets.append((le, running))
        family = HistogramMetricFamily(
            f"{NS}_batch_write_seconds", "Time to write one batch (worker side)", labels=[SCOPE]
        )
        family.add_metric([SHARED], buckets, sum_value=raw.get("sum", 0.0))
        return family


async def read_shared_hashes(redis: Any) -> dict[str, dict[bytes, bytes]]:
    keys = (
        stats.WRITTEN,
        stats.QUARANTINED,
        stats.BATCHES,
        stats.WRITE_SECONDS,
        stats.RETENTION,
        stats.RETENTION_DELETED,
        stats.RETENTION_DROPPED,
    )
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        values = await pipe.execute()
    return dict(zip(keys, values, strict=True))


def _process_registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


class SpoolCollector(Collector):
    """This host's spool file (shared by the api processes of the host: aggregate with max by instance)."""

    def __init__(self, spool_stats: SpoolStats) -> None:
        self.stats = spool_stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield GaugeMetricFamily(f"{NS}_spool_batches", "Batches waiting in this host's spool", value=s.batches)
        yield GaugeMetricFamily(f"{NS}_spool_bytes", "Bytes held by this host's spool", value=s.bytes)
        yield GaugeMetricFamily(
            f"{NS}_spool_oldest_age_seconds", "Age of the oldest spooled batch (0: none)", value=s.oldest_age_s()
        )


async def metrics(request: Request) -> Response:
    """Prometheus text: this process's counters, the spool, then the shared queue and worker state."""
    state = request.app.state
    own = generate_latest(_process_registry()) + BUILD_INFO_TEXT
    if state.spool is not None:
        spool = CollectorRegistry(auto_describe=False)
        spool.register(SpoolCollector(await state.spool.stats()))
        own += generate_latest(spool)
    try:
        snapshot = await state.queue_watch.refresh()
        hashes = await read_shared_hashes(state.redis)
    except Exception:
        # Redis down: serve what this process knows; the queue gauges are absent, which alerts.
        return Response(own, media_type=CONTENT_TYPE)
    shared = CollectorRegistry(auto_describe=False)
    shared.register(SharedStateCollector(snapshot, hashes))
    return Response(own + generate_latest(shared), media_type=CONTENT_TYPE)


def observe_push(route: str, started: float, code: int, outcome: str) -> None:
    """Count one push answer."""
    REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
    PUSHES.labels(outcome, str(code)).inc()
