"""Prometheus metrics: one /metrics endpoint per stage, names ``metalcore_<stage>_...``.

Stages declare their own metrics with :func:`counter`, :func:`gauge` and :func:`histogram` so the prefix
is never spelled by hand. Latencies are histograms, not only counters.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

# Buckets from 0.5 ms to 60 s: DHCP answers live at the low end, BMC cycles and long-polls at the high end.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _name(stage: str, name: str) -> str:
    return f"metalcore_{stage}_{name}"


def counter(stage: str, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
    return Counter(_name(stage, name), doc, labels)


def gauge(stage: str, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
    return Gauge(_name(stage, name), doc, labels)


def histogram(stage: str, name: str, doc: str, labels: tuple[str, ...] = (),
              buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
    return Histogram(_name(stage, name), doc, labels, buckets=buckets)


def serve(address: str, port: int) -> int:
    """Start the /metrics endpoint in a thread; returns the bound port (0 = disabled)."""
    if not port:
        return 0
    server, _thread = start_http_server(port, addr=address, registry=REGISTRY)
    return server.server_port
