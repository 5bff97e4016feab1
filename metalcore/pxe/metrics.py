"""The PXE stage's Prometheus metrics, declared once (``metalcore_pxe_*``).

Label values come from closed sets (message type names, arch numbers as strings or "none",
``Malformed``/``IgnoreReason`` values, boot ``Verdict`` values), never from peer-controlled strings,
so a hostile client cannot grow the label space. Hot-path children are resolved once and cached.
"""

from __future__ import annotations

from prometheus_client import REGISTRY

from metalcore import metrics

STAGE = "pxe"

# DHCP answers live at the low end; the first offer to a new MAC waits for the Metal API (up to seconds)
OFFER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15)


def _get_or_make(make, name: str):
    full = f"metalcore_{STAGE}_{name}"
    existing = REGISTRY._names_to_collectors.get(full) or REGISTRY._names_to_collectors.get(full + "_total")
    return existing if existing is not None else make()


class PxeMetrics:
    """All metrics of the stage; safe to build twice in one process (tests): it reuses the collectors."""

    def __init__(self) -> None:
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
        self._packet_children: dict[tuple[str, str, str], object] = {}

    def packet(self, direction: str, mtype: str, arch: str) -> None:
        key = (direction, mtype, arch)
        child = self._packet_children.get(key)
        if child is None:
            child = self._packet_children[key] = self.packets.labels(direction, mtype, arch)
        child.inc()
