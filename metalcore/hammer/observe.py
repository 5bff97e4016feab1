"""What the hammer proxy tells the world about each request: Prometheus metrics and bus events.

Metrics (metalcore_hammer_proxy_*), created once per process at import:
    requests_total{route,code}            every answered request, by Flask rule ("unknown" for 404s)
    request_seconds{route}                time to answer, long-polls included
    upstream_seconds{call,outcome}        each Metal API call (find, partition, register, wait, ...)
    long_polls_held                       install long-polls waiting right now
    ipmi_jobs_total{device,outcome}       boot-device jobs sent to the IPMI stage

Bus: every request and its outcome is one event on the ``hammer`` stream, with the machine id and
``trace_id_for(machine id)`` so that ``metalcore tap hammer --machine ID`` follows one machine. Names:
boot, dhcp, register, install-wait (a long-poll starts), install-retry (304), install-done,
report-done, event, machine, abort-reinstall, boot-device; ``<name>-failed`` when it did not work.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterator

from loguru import logger

from metalcore import metrics
from metalcore.protocol.envelope import trace_id_for

STAGE = "hammer_proxy"
STREAM = "hammer"

REQUESTS = metrics.counter(STAGE, "requests_total", "Requests answered, by route and status code",
                           ("route", "code"))
REQUEST_SECONDS = metrics.histogram(STAGE, "request_seconds", "Time to answer a request (long-polls included)",
                                    ("route",))
UPSTREAM_SECONDS = metrics.histogram(STAGE, "upstream_seconds", "Latency of Metal API calls",
                                     ("call", "outcome"))
LONG_POLLS = metrics.gauge(STAGE, "long_polls_held", "Install long-polls waiting for an allocation now")
IPMI_JOBS = metrics.counter(STAGE, "ipmi_jobs_total", "boot-device jobs sent to the IPMI stage",
                            ("device", "outcome"))


# ``labels()`` takes the metric's lock and builds a key on every call (≈ 3 µs); the label sets here are
# few (routes × codes, calls × outcomes), so each child is looked up once and kept.
_children: dict[tuple[Any, ...], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, cached."""
    key = (metric, labels)
    c = _children.get(key)
    if c is None:
        c = _children[key] = metric.labels(*labels)
    return c


@contextmanager
def upstream(call: str) -> Iterator[None]:
    """Time one Metal API call into upstream_seconds{call,outcome}."""
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    finally:
        child(UPSTREAM_SECONDS, call, outcome).observe(time.perf_counter() - started)


@lru_cache(maxsize=8192)
def _trace_id(key: str) -> str:
    return trace_id_for(key)  # uuid5 + sha1 per event otherwise; a rack has a few hundred machines


class BusEvents:
    """Publishes hammer events through an EventPublisher-like object (or nowhere when None)."""

    def __init__(self, publisher: Any) -> None:
        self.publisher = publisher

    def publish(self, name: str, body: dict[str, Any], *, machine_id: str | None = None,
                mac: str | None = None) -> None:
        if self.publisher is None:
            return
        key = machine_id or mac
        try:
            self.publisher.publish(STREAM, name, body, machine_id=machine_id, mac=mac,
                                   trace_id=_trace_id(key) if key else None)
        except Exception as e:  # the bus must never fail a request
            logger.warning("could not publish hammer.{}: {}", name, e)
