"""Prometheus adapter: a MetricsSink backed by prometheus_client, and the /metrics HTTP server.

Every metric of ``rebalancerd.observability.METRICS`` is registered up front as
``rebalancerd_<short name>`` in a registry of its own (so tests and the daemon never collide with
the process-global default registry). Callers keep using the short names.

A metrics call must never take the daemon down: an undeclared name or wrong labels raise in
``strict`` mode (tests), otherwise they are logged once and counted in
``rebalancerd_errors_total{where="metrics"}``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.registry import Collector

from rebalancerd.observability import METRICS, LabelValues, MetricSpec, label_sets

PREFIX = "rebalancerd_"
DEFAULT_ADDRESS = "127.0.0.1:9477"

log = structlog.get_logger("rebalancerd.metrics")


def _make(spec_name: str, spec: MetricSpec, registry: CollectorRegistry) -> Collector:
    full = PREFIX + spec_name
    labels = list(spec.labels)
    if spec.type == "counter":
        # prometheus_client appends `_total` itself.
        base = full[: -len("_total")] if full.endswith("_total") else full
        return Counter(base, spec.help, labels, registry=registry)
    if spec.type == "gauge":
        return Gauge(full, spec.help, labels, registry=registry)
    if spec.type == "histogram":
        if spec.buckets:
            return Histogram(full, spec.help, labels, registry=registry, buckets=spec.buckets)
        return Histogram(full, spec.help, labels, registry=registry)
    raise ValueError(f"metric {spec_name}: unknown type {spec.type!r}")


class PrometheusMetrics:
    """MetricsSink over prometheus_client, in its own CollectorRegistry."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        strict: bool = False,
        process_metrics: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.strict = strict
        self._metrics: dict[str, Any] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        for name, spec in METRICS.items():
            self._metrics[name] = _make(name, spec, self.registry)
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)

    # -- MetricsSink -------------------------------------------------------------------------
    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self._apply(name, "counter", labels, lambda m: m.inc(amount))

    def set(self, name: str, value: float, **labels: str) -> None:
        self._apply(name, "gauge", labels, lambda m: m.set(value))

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._apply(name, "histogram", labels, lambda m: m.observe(value))

    def initialise(self, values: LabelValues) -> None:
        """Create the series of these counters' label values at 0 (without it a labelled counter
        has no series before its first event, and ``increase()`` cannot see that event)."""
        for name, labels in label_sets(values):
            if METRICS[name].type != "counter":
                raise TypeError(f"metric {name!r}: only counters start at 0 for known labels")
            self._metrics[name].labels(**labels)

    def remove(self, name: str, **labels: str) -> None:
        """Drop one label set (e.g. a VM's remaining-bytes gauge once its migration ended)."""
        metric = self._metrics.get(name)
        spec = METRICS.get(name)
        if metric is None or spec is None or not spec.labels:
            return
        with contextlib.suppress(KeyError, ValueError):
            metric.remove(*[str(labels[k]) for k in spec.labels])

    # -- internals ---------------------------------------------------------------------------
    def _apply(self, name: str, kind: str, labels: dict[str, str], op: Any) -> None:
        try:
            spec = METRICS.get(name)
            if spec is None:
                raise KeyError(f"undeclared metric {name!r}: add it to observability.METRICS")
            if spec.type != kind:
                raise TypeError(f"metric {name!r} is a {spec.type}, not a {kind}")
            if set(labels) != set(spec.labels):
                raise ValueError(
                    f"metric {name!r} takes labels {sorted(spec.labels)}, got {sorted(labels)}"
                )
            m = self._metrics[name]
            if spec.labels:
                m = m.labels(**{k: str(v) for k, v in labels.items()})
            op(m)
        except (KeyError, TypeError, ValueError) as e:
            if self.strict:
                raise
            self._misuse(name, e)

    def _misuse(self, name: str, e: Exception) -> None:
        with self._lock:
            first = name not in self._warned
            self._warned.add(name)
        if first:
            log.warning("metrics_misuse", metric=name, error=str(e))
        if name != "errors_total":
            self.inc("errors_total", where="metrics")


def parse_address(address: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (= 127.0.0.1) -> (host, port)."""
    addr = address.strip()
    if addr.startswith("["):
        host, sep, port = addr[1:].partition("]:")
        if not sep:
            raise ValueError(f"metrics address {address!r}: expected [ipv6]:port")
    else:
        host, sep, port = addr.rpartition(":")
        if not sep:
            raise ValueError(f"metrics address {address!r}: expected host:port")
        host = host or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"metrics address {address!r}: port must be a number") from None
    if not 0 <= p <= 65535:
        raise ValueError(f"metrics address {address!r}: port out of range")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"metrics address {address!r}: host must be an IP address or localhost"
            ) from None
    return host, p


@dataclass
class MetricsServer:
    """The /metrics endpoint, served from a daemon thread (never blocks the event loop)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def host(self) -> str:
        return str(self.server.server_address[0])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(metrics: PrometheusMetrics, address: str = DEFAULT_ADDRESS) -> MetricsServer:
    """Start serving /metrics on ``address``. Raises OSError if the address cannot be bound."""
    host, port = parse_address(address)
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsServer(server, thread)
