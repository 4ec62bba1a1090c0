"""Prometheus metrics for /metrics: updates handled, plans by state, PBX calls
by status, latencies. One registry per process (replicas are scraped apart)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, plans_by_state: Callable[[], dict[str, int]] | None = None):
        self.registry = CollectorRegistry()
        self.updates = Counter(
            "pbxbot_updates_total", "Telegram updates handled", ["type", "outcome"], registry=self.registry
        )
        self.update_seconds = Histogram(
            "pbxbot_update_seconds",
            "Time to handle an update",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.pbx_calls = Counter(
            "pbxbot_pbx_calls_total", "MikoPBX API calls", ["pbx", "method", "status"], registry=self.registry
        )
        self.pbx_seconds = Histogram(
            "pbxbot_pbx_call_seconds",
            "MikoPBX API call latency",
            ["pbx"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.telegram_refused = Counter(
            "pbxbot_telegram_refused_total",
            "Telegram Bot API requests Telegram refused (an error answer), by method and code",
            ["method", "code"],
            registry=self.registry,
        )
        self.scheduler_owner = Gauge(
            "pbxbot_scheduler_owner", "1 when this process runs the schedules", registry=self.registry
        )
        if plans_by_state is not None:
            self.registry.register(_PlansCollector(plans_by_state))

    def pbx_listener(self, pbx: str) -> Callable[[Any], None]:
        def record(call: Any) -> None:
            if getattr(call, "joined", False):  # shared a call counted already
                return
            self.pbx_calls.labels(pbx, call.method, str(call.status or "error")).inc()
            self.pbx_seconds.labels(pbx).observe(call.elapsed_ms / 1000)

        return record

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PlansCollector:
    def __init__(self, count: Callable[[], dict[str, int]]):
        self.count = count

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("pbxbot_plans", "Plans by state", labels=["state"])
        for state, n in sorted(self.count().items()):
            family.add_metric([state], n)
        yield family
