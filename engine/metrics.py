"""Prometheus metrics of a flowdeck database (`GET /metrics`).

`StoreCollector` is a prometheus-client collector whose numbers come from SQLite, so they
cover every process writing the file, not just this one. `await scrape(registry)` reads in a
worker thread, then renders the snapshot: the event loop never waits on SQLite.

Step attempts are folded in incrementally by row id (each attempt row is read once after it
ended), so a scrape costs the same with 10 or 10 million attempts: per agent, attempts by
status, failures by error class and a latency histogram. Current-state gauges (runs by status,
pending reviews, breakers by state, undo entries by status) are indexed counts; the health
score (and its components) is `engine.analytics` over the last hour.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from engine import analytics
from engine.store import Store

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Upper bounds (seconds) of the step latency histogram; +Inf is implied."""
PAGE = 20_000
MAX_OPEN = 10_000
"""Attempt rows seen before they ended that are re-checked on each scrape (oldest forgotten)."""


@dataclass(slots=True)
class _Agent:
    by_status: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total_seconds: float = 0.0
    count: int = 0


@dataclass(slots=True)
class Snapshot:
    """Numbers of one scrape."""

    runs: dict[str, int] = field(default_factory=dict)
    reviews_pending: int = 0
    breakers: dict[str, int] = field(default_factory=dict)
    undo: dict[str, int] = field(default_factory=dict)
    health: Any = None
    """`analytics.HealthReport` of the last `health_window` seconds."""
    extra: dict[str, tuple[str, float]] = field(default_factory=dict)


class StoreCollector(Collector):
    """Collects flowdeck metrics from a store; render with `await scrape(registry)`."""

    def __init__(
        self, store: Store, gauges: Callable[[], dict[str, tuple[str, float]]] | None = None
    ):
        self.store = store
        self.gauges = gauges
        """Extra gauges of the serving process (name -> (help, value)), read at each scrape."""
        self.health_window = 3600.0
        """Seconds of history the health score is computed over."""
        self.snapshot = Snapshot()
        self._agents: dict[str, _Agent] = {}
        self._last_id = 0
        self._open: dict[int, None] = {}
        self._lock = asyncio.Lock()

    async def scrape(self, registry: CollectorRegistry) -> bytes:
        """Refresh from the store, then render `registry` (which holds this collector)."""
        async with self._lock:  # one scrape at a time: rows are folded once, never raced
            self.snapshot = await self.store.aread(self._read)
            if self.gauges is not None:
                self.snapshot.extra = self.gauges()
            return generate_latest(registry)

    # ------------------------------------------------------------------ reading (a thread)

    def _read(self, db: Any) -> Snapshot:
        snap = Snapshot()
        snap.runs = dict(db.execute("SELECT status, count(*) FROM runs GROUP BY status"))
        snap.reviews_pending = db.execute(
            "SELECT count(*) FROM reviews WHERE status = 'pending'"
        ).fetchone()[0]
        snap.breakers = dict(db.execute("SELECT state, count(*) FROM breakers GROUP BY state"))
        snap.undo = dict(db.execute("SELECT status, count(*) FROM undo_log GROUP BY status"))
        self._fold_attempts(db)
        now = time.time()
        snap.health = analytics.compute(db, since=now - self.health_window, now=now).health
        return snap

    def _fold_attempts(self, db: Any) -> None:
        cols = "id, agent, status, duration_ms, error_class, ended_at"
        if self._open:
            ids = list(self._open)
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(f"SELECT {cols} FROM attempts WHERE id IN ({marks})", chunk)
                seen = set()
                for row in rows:
                    seen.add(row[0])
                    if row[5] is not None:
                        self._add(row)
                        del self._open[row[0]]
                for gone in set(chunk) - seen:  # pruned meanwhile
                    self._open.pop(gone, None)
        while True:
            rows = db.execute(
                f"SELECT {cols} FROM attempts WHERE id > ? ORDER BY id LIMIT ?",
                (self._last_id, PAGE),
            ).fetchall()
            for row in rows:
                if row[5] is None:
                    self._open[row[0]] = None
                else:
                    self._add(row)
            if rows:
                self._last_id = rows[-1][0]
            while len(self._open) > MAX_OPEN:
                del self._open[next(iter(self._open))]
            if len(rows) < PAGE:
                break

    def _add(self, row: tuple[Any, ...]) -> None:
        _, agent, status, duration_ms, error_class, _ = row
        a = self._agents.get(agent or "")
        if a is None:
            a = self._agents[agent or ""] = _Agent()
        a.by_status[status] = a.by_status.get(status, 0) + 1
        if status == "failed":
            key = error_class or "unknown"
            a.failures[key] = a.failures.get(key, 0) + 1
        if duration_ms is not None:
            seconds = max(0.0, duration_ms / 1000)
            a.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
            a.total_seconds += seconds
            a.count += 1

    # ------------------------------------------------------------------ rendering

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        runs = GaugeMetricFamily("flowdeck_runs", "Runs by status", labels=["status"])
        for status, n in sorted(snap.runs.items()):
            runs.add_metric([status], n)
        yield runs
        yield GaugeMetricFamily(
            "flowdeck_reviews_pending", "Reviews waiting for a decision", value=snap.reviews_pending
        )
        breakers = GaugeMetricFamily(
            "flowdeck_breakers", "Circuit breakers by state", labels=["state"]
        )
        for state, n in sorted(snap.breakers.items()):
            breakers.add_metric([state], n)
        yield breakers
        yield GaugeMetricFamily(
            "flowdeck_breakers_open", "Circuit breakers open", value=snap.breakers.get("open", 0)
        )
        undo = GaugeMetricFamily(
            "flowdeck_undo_entries", "Undo log entries by status", labels=["status"]
        )
        for status, n in sorted(snap.undo.items()):
            undo.add_metric([status], n)
        yield undo

        attempts = CounterMetricFamily(
            "flowdeck_step_attempts",
            "Step attempts by agent and outcome",
            labels=["agent", "status"],
        )
        failures = CounterMetricFamily(
            "flowdeck_step_failures",
            "Failed step attempts by agent and error class",
            labels=["agent", "error_class"],
        )
        latency = HistogramMetricFamily(
            "flowdeck_step_duration_seconds", "Duration of step attempts", labels=["agent"]
        )
        for agent, a in sorted(self._agents.items()):
            for status, n in sorted(a.by_status.items()):
                attempts.add_metric([agent, status], n)
            for error_class, n in sorted(a.failures.items()):
                failures.add_metric([agent, error_class], n)
            cumulative, buckets = 0, []
            for bound, n in zip((*BUCKETS, float("inf")), a.buckets, strict=True):
                cumulative += n
                buckets.append((_bound(bound), cumulative))
            latency.add_metric([agent], buckets, sum_value=a.total_seconds)
        yield attempts
        yield failures
        yield latency
        if snap.health is not None:
            yield GaugeMetricFamily(
                "flowdeck_health_score",
                "Health score 0-100 of the last hour (see engine/analytics.py)",
                value=snap.health.score,
            )
            points = GaugeMetricFamily(
                "flowdeck_health_component_points",
                "Points of each health component (weight x value)",
                labels=["component"],
            )
            for c in snap.health.components:
                points.add_metric([c.name], c.points)
            yield points
        for name, (text, value) in sorted(snap.extra.items()):
            yield GaugeMetricFamily(name, text, value=value)


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)
