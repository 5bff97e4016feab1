"""The PXE stage's Prometheus metrics, declared once (``metalcore_pxe_*``).

Label values come from closed sets (message type names, arch numbers as strings or "none",
``Malformed``/``IgnoreReason`` values, boot ``Verdict`` values), never from peer-controlled strings,
so a hostile client cannot grow the label space. Hot-path children are resolved once and cached.
"""

from __future__ import annotations

import bisect
import threading
import weakref

from prometheus_client import REGISTRY

from metalcore import metrics

STAGE = "pxe"

# DHCP answers live at the low end; the first offer to a new MAC waits for the Metal API (up to seconds)
OFFER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15)


class Tally:
    """A counter child as the packet loop sees it: ``inc()`` adds to a plain int (no lock: one
    Prometheus ``inc`` takes a mutex, ~0.5 µs, and the reply-cache path did three per answer: a third of
    its time). ``flush()`` adds what accrued to the child; only one thread may call ``inc`` (the loop),
    any thread ``flush`` (the writer only increments, the flusher reads once and adds the difference)."""

    __slots__ = ("child", "n", "_synced", "__weakref__")

    def __init__(self, child) -> None:
        self.child, self.n, self._synced = child, 0, 0

    def inc(self) -> None:
        self.n += 1

    def flush(self) -> None:
        n = self.n
        if n != self._synced:
            self.child.inc(n - self._synced)
            self._synced = n


class TallyHistogram:
    """The same for a histogram child: ``observe`` counts into a list (bisect over the bounds, as
    prometheus_client does), ``flush`` adds the counts to the child's buckets and sum. That uses the
    child's ``_buckets``/``_sum`` (prometheus_client 0.26; tests/unit/test_pxe_fast_metrics.py checks the
    exposition); a child without them is observed directly."""

    __slots__ = ("child", "bounds", "counts", "sum", "_synced", "_synced_sum", "direct", "observe", "__weakref__")

    def __init__(self, child) -> None:
        self.child = child
        self.bounds = tuple(getattr(child, "_upper_bounds", ()))  # the last one is +Inf
        self.counts = [0] * len(self.bounds)
        self._synced = [0] * len(self.counts)
        self.sum = self._synced_sum = 0.0
        ok = (self.bounds and self.bounds[-1] == float("inf") and hasattr(child, "_sum")
              and len(getattr(child, "_buckets", ())) == len(self.bounds))
        self.direct = not ok
        self.observe = child.observe if self.direct else self._observe

    def _observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v

    def flush(self) -> None:
        if not self.direct:
            counts, total = list(self.counts), self.sum
            for i, (n, was) in enumerate(zip(counts, self._synced)):
                if n != was:
                    self.child._buckets[i].inc(n - was)
            if total != self._synced_sum:
                self.child._sum.inc(total - self._synced_sum)
            self._synced, self._synced_sum = counts, total


_TALLIES: "weakref.WeakSet" = weakref.WeakSet()
_FLUSH_LOCK = threading.Lock()


def flush_tallies() -> None:
    """Bring every Prometheus child up to date (the stage calls it a few times a second and before each
    scrape; see _FlushOnScrape)."""
    with _FLUSH_LOCK:
        for t in list(_TALLIES):
            t.flush()


class _FlushOnScrape:
    """Registered before the stage's metrics, so the registry runs it first on every scrape."""

    def collect(self):
        flush_tallies()
        return []

    def describe(self):
        return []


def _get_or_make(make, name: str):
    full = f"metalcore_{STAGE}_{name}"
    existing = REGISTRY._names_to_collectors.get(full) or REGISTRY._names_to_collectors.get(full + "_total")
    return existing if existing is not None else make()


class PxeMetrics:
    """All metrics of the stage; safe to build twice in one process (tests): it reuses the collectors."""

    _flush_hook: "_FlushOnScrape | None" = None

    def __init__(self) -> None:
        if PxeMetrics._flush_hook is None:
            PxeMetrics._flush_hook = _FlushOnScrape()
            REGISTRY.register(PxeMetrics._flush_hook)
        c, h, g = metrics.counter, metrics.histogram, metrics.gauge
        self.packets = _get_or_make(lambda: c(STAGE, "dhcp_packets_total", "DHCP packets seen on the PXE link",
                                              ("direction", "type", "arch")), "dhcp_packets_total")
        self.malformed = _get_or_make(lambda: c(STAGE, "dhcp_malformed_total", "Undecodable DHCP frames, by reason",
                                                ("reason",)), "dhcp_malformed_total")
        self.ignored = _get_or_make(lambda: c(STAGE, "dhcp_ignored_total", "Requests left unanswered, by reason",
                                              ("reason",)), "dhcp_ignored_total")
        self.offers = _get_or_make(lambda: c(STAGE, "proxy_replies_total", "ProxyDHCP replies sent",
                                             ("kind", "arch")), "proxy_replies_total")
        self.decisions = _get_or_make(lambda: c(STAGE, "boot_decisions_total", "Boot decisions by verdict",
                                                ("verdict",)), "boot_decisions_total")
        self.latency = _get_or_make(lambda: h(STAGE, "offer_latency_seconds",
                                              "From receiving a DISCOVER to sending the ProxyDHCP offer",
                                              ("cached",), buckets=OFFER_BUCKETS), "offer_latency_seconds")
        self.unknown_arch = _get_or_make(lambda: c(STAGE, "unknown_arch_total",
                                                   "PXE DISCOVERs with an arch we have no boot file for"),
                                         "unknown_arch_total")
        self.socket_drops = _get_or_make(lambda: c(STAGE, "socket_drops_total",
                                                   "Frames the kernel dropped on the raw socket (PACKET_STATISTICS)"),
                                         "socket_drops_total")
        self.events_dropped = _get_or_make(lambda: c(STAGE, "bus_events_dropped_total",
                                                     "dhcp bus events dropped because the publisher fell behind"),
                                           "bus_events_dropped_total")
        self.pxe_booting = _get_or_make(lambda: c(STAGE, "pxe_booting_events_total",
                                                  "'PXE Booting' provisioning events sent to the Metal API",
                                                  ("outcome",)), "pxe_booting_events_total")
        self.boot_loops = _get_or_make(lambda: c(STAGE, "boot_loops_total", "Machines seen in a PXE boot loop"),
                                       "boot_loops_total")
        self.tftp = _get_or_make(lambda: c(STAGE, "tftp_transfers_total", "TFTP read requests", ("outcome",)),
                                 "tftp_transfers_total")
        self.tftp_bytes = _get_or_make(lambda: c(STAGE, "tftp_bytes_total", "Bytes sent over TFTP"),
                                       "tftp_bytes_total")
        self.http = _get_or_make(lambda: c(STAGE, "http_requests_total", "HTTP requests of booting machines",
                                           ("route", "status")), "http_requests_total")
        self.http_bytes = _get_or_make(lambda: c(STAGE, "http_bytes_total", "Bytes of boot files sent over HTTP",
                                                 ("route",)), "http_bytes_total")
        self.cache_fetch = _get_or_make(lambda: h(STAGE, "boot_file_fetch_seconds",
                                                  "Fetching a kernel/initrd into the cache", ("outcome",)),
                                        "boot_file_fetch_seconds")
        self.pending = _get_or_make(lambda: g(STAGE, "decisions_pending", "Boot decisions being asked"),
                                    "decisions_pending")
        self._packet_children: dict[tuple[str, str, str], Tally] = {}
        self._tallies: dict[int, object] = {}

    def tally(self, child) -> Tally:
        """The one Tally of a counter child (for the packet loop's thread only)."""
        return self._one_tally(child, Tally)  # type: ignore[return-value]

    def tally_histogram(self, child) -> TallyHistogram:
        return self._one_tally(child, TallyHistogram)  # type: ignore[return-value]

    def _one_tally(self, child, kind):
        t = self._tallies.get(id(child))
        if t is None:  # setdefault: the decision pool may create one at the same time (_remember)
            t = self._tallies.setdefault(id(child), kind(child))
            _TALLIES.add(t)
        return t

    def packet(self, direction: str, mtype: str, arch: str) -> None:
        """Count a DHCP packet; the packet loop's thread only (a Tally)."""
        key = (direction, mtype, arch)
        child = self._packet_children.get(key)
        if child is None:
            child = self._packet_children[key] = self.tally(self.packets.labels(direction, mtype, arch))
        child.inc()

    def flush(self) -> None:
        flush_tallies()
