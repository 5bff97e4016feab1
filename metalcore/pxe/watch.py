"""Watch the PXE link: every DHCP frame the raw socket hands us is decoded, counted and becomes a
``dhcp`` event on the bus; requests to port 67 are handed to the responder.

Rules of this file:

1. Nothing a peer sends can stop the loop: a frame either decodes or raises ``MalformedPacket``,
   which is counted by its reason (``metalcore_pxe_dhcp_malformed_total{reason}``) and dropped.
2. The loop never waits for the bus or the Metal API. Bus events go through a bounded queue to a
   publisher thread (events are observability: under a flood they are dropped and counted, the
   answer to a booting machine is not); boot decisions run on the responder's pool.
3. Metric labels come from closed sets: a peer-controlled arch number becomes "other".
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Callable

from loguru import logger

from metalcore.protocol import dhcp, frames, pxe
from metalcore.protocol.dhcp import DhcpPacket, MessageType, Option
from metalcore.protocol.errors import MalformedPacket
from metalcore.pxe.metrics import PxeMetrics
from metalcore.pxe.rawsock import Received

__all__ = ["Seen", "decode_frame", "arch_label", "type_label", "EventQueue", "Watcher", "event_body"]

_ARCH_NAMES = {int(a): str(int(a)) for a in pxe.Arch}
_TYPE_NAMES = {int(t): t.name for t in MessageType}
EVENT_QUEUE_MAX = 10_000  # a few seconds of a retry storm; beyond that events are dropped, counted
# Bus events: a token bucket. A rack sends a few DHCP packets per second, a whole rack booting at once a
# few hundred within a minute (EVENT_BURST covers that); beyond EVENT_RATE sustained (a flood, a
# benchmark) events are dropped and counted, so that observability cannot eat the CPU (one GIL) the
# answers to booting machines need. One published event costs ~70 µs of GIL time (decode 12, body 11,
# envelope + JSON + record + ZeroMQ hand-off ~45). At the former 1,000/s that was 7 % of a core and,
# in 50-event batches, a ~3 ms stall of the packet loop every 50 ms: the p99 of the offer latency at 32
# in flight (4.1-4.7 ms). At 200/s the publisher still held the GIL ~1.4 % of the time, and a request
# that arrived then waited up to the switch interval: p99 at 1 in flight 0.27-0.30 ms vs 0.13-0.16 ms
# at 50/s (docs/benchmarks-pxe.md, "Run 2026-11-25 07:25" and after).
EVENT_RATE = 50.0
EVENT_BURST = 1000.0
# The publisher wakes every PUBLISH_POLL while events are queued and publishes at most PUBLISH_BATCH
# per wake-up, so it holds the GIL for ~0.5 ms at a time at most (a burst drains at 1,600/s); with an
# empty queue it looks every PUBLISH_IDLE_POLL (events reach the bus within 50 ms).
PUBLISH_POLL = 0.005
PUBLISH_IDLE_POLL = 0.05
PUBLISH_BATCH = 8


def arch_label(packet: DhcpPacket) -> str:
    v = packet.options.get(Option.CLIENT_ARCH)
    if v is None:
        return "none"
    if len(v) < 2 or len(v) % 2:
        return "bad"
    return _ARCH_NAMES.get((v[0] << 8) | v[1], "other")


def type_label(packet: DhcpPacket) -> str:
    v = packet.options.get(Option.MESSAGE_TYPE)
    if v is None:
        return "BOOTP"
    if len(v) != 1:
        return "bad"
    return _TYPE_NAMES.get(v[0], "other")


@dataclass(slots=True)
class Seen:
    udp: frames.UdpFrame
    packet: DhcpPacket
    outgoing: bool
    at: float  # time.perf_counter() right after recv
    raw: bytes = b""  # the frame as received (the responder's reply cache keys on it)


def decode_frame(rx: Received, at: float) -> Seen:
    """Ethernet/IPv4/UDP + DHCP. A frame whose UDP checksum the kernel has not filled in yet
    (offload, auxdata CSUMNOTREADY) is not checksum-verified; partial sums are accepted anyway."""
    udp = frames.decode_udp_frame(rx.frame, verify_checksums=not rx.csum_not_ready and not rx.outgoing)
    return Seen(udp, dhcp.decode(udp.payload), rx.outgoing, at, rx.frame)


def _text(raw: bytes | None) -> str | None:
    # option 60/77 are peer bytes: never decode them blindly (non-UTF-8 vendor classes exist)
    return None if raw is None else raw.decode("ascii", "backslashreplace")


def event_body(seen: Seen) -> dict:
    p, u = seen.packet, seen.udp
    info = pxe.client_info(p)
    body = {
        "direction": "out" if seen.outgoing else "in",
        "op": p.op,
        "type": type_label(p),
        "mac": p.mac,
        "xid": f"0x{p.xid:08x}",
        "arch": info.arch,
        "vendor_class": _text(p.options.get(Option.VENDOR_CLASS)),
        "user_class": [c.decode("ascii", "backslashreplace") for c in info.user_classes],
        "guid": str(info.guid) if info.guid is not None else None,
        "src": f"{u.ip.src}:{u.udp.src_port}",
        "dst": f"{u.ip.dst}:{u.udp.dst_port}",
    }
    if p.op == dhcp.Op.BOOTREPLY:
        body["yiaddr"] = str(p.yiaddr)
        body["siaddr"] = str(p.siaddr)
        body["file"] = p.file_name
    return body


class EventQueue:
    """Bounded, rate-limited hand-off from the packet loop to the bus publisher (rule 2). Items are the
    raw frames: decoding for the event body happens on the publisher thread, and only for events that
    are published."""

    def __init__(self, publish: Callable[[Received, float], None], metrics: PxeMetrics,
                 maxlen: int = EVENT_QUEUE_MAX, rate: float = EVENT_RATE, burst: float = EVENT_BURST) -> None:
        self._publish = publish
        self._metrics = metrics
        self._q: collections.deque = collections.deque()
        self._maxlen = maxlen
        self._rate = rate
        self._burst = max(burst, 1.0)
        self._tokens = self._burst
        self._refilled = time.monotonic()
        self._drop_child = metrics.events_dropped
        self._stop_event = threading.Event()
        self.dropped = 0
        self._dropped_synced = 0
        self._thread = threading.Thread(target=self._run, name="pxe-events", daemon=True)

    def start(self) -> "EventQueue":
        self._thread.start()
        return self

    def put(self, rx: Received, at: float) -> None:
        # the rate limit is applied here, in the packet loop, so a dropped event costs a few
        # arithmetic operations and never wakes the publisher thread (which would take the GIL)
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens < 1 or len(self._q) >= self._maxlen:
            self.dropped += 1  # the metric is brought up to date by the publisher thread (no lock here)
            return
        self._tokens -= 1
        self._q.append((rx, at))  # no wake-up: the publisher polls (a notify per packet cost the loop ~10 %)

    def _run(self) -> None:
        while True:
            stopping = self._stop_event.wait(PUBLISH_POLL if self._q else PUBLISH_IDLE_POLL)
            self.sync_metrics()
            for _ in range(len(self._q) if stopping else PUBLISH_BATCH):
                if not self._q:
                    break
                rx, at = self._q.popleft()
                try:
                    self._publish(rx, at)
                except MalformedPacket:
                    pass  # counted by the watcher already
                except Exception:  # a bug in one event must not end the publisher
                    logger.exception("could not publish a dhcp event")
            if stopping:
                return

    def sync_metrics(self) -> None:
        dropped = self.dropped  # only the packet loop writes it: read once, add the difference
        if dropped != self._dropped_synced:
            self._drop_child.inc(dropped - self._dropped_synced)
            self._dropped_synced = dropped

    def stop(self, timeout: float = 2.0) -> None:
        self._stop_event.set()
        self._thread.join(timeout)
        self.sync_metrics()


class Watcher:
    """Reads the raw socket in one thread; ``on_request(seen)`` gets every incoming packet to port 67."""

    def __init__(self, sock, metrics: PxeMetrics, events: EventQueue | None,
                 on_request: Callable[[Seen], None], is_ours: Callable[[Seen], bool] = lambda s: False,
                 fast: Callable[[bytes, float], bool] | None = None) -> None:
        self.fast = fast
        self.sock = sock
        self.metrics = metrics
        self.events = events
        self.on_request = on_request
        self.is_ours = is_ours
        self.seen = 0
        self.malformed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="pxe-watch", daemon=True)

    def start(self) -> "Watcher":
        self.sock.settimeout(0.25)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def run(self) -> None:
        recv, perf = self.sock.recv, time.perf_counter
        while not self._stop.is_set():
            try:
                rx = recv()
            except TimeoutError:
                continue
            except OSError as e:
                if self._stop.is_set():
                    return
                logger.warning("raw socket receive failed: {}", e)
                time.sleep(0.1)
                continue
            self.handle(rx, perf())

    def handle(self, rx: Received, at: float) -> None:
        if self.fast is not None and not rx.pkttype == 4 and self.fast(rx.frame, at):  # 4: PACKET_OUTGOING
            self.seen += 1  # a repeat of a request answered before: answered from the reply cache
            if self.events is not None:
                self.events.put(rx, at)
            return
        try:
            seen = decode_frame(rx, at)
        except MalformedPacket as e:
            self.malformed += 1
            self.metrics.malformed.labels(e.reason.value).inc()
            return
        except Exception:  # a codec bug: count it, keep serving (the fuzz tests exist to prevent this)
            self.malformed += 1
            self.metrics.malformed.labels("decoder_bug").inc()
            logger.opt(exception=True).error("DHCP decoder raised on a {}-byte frame", len(rx.frame))
            return
        self.seen += 1
        p = seen.packet
        if seen.outgoing and self.is_ours(seen):
            return  # our own reply, looped back to a sibling socket: already counted as a reply
        self.metrics.packet("out" if seen.outgoing else "in", type_label(p), arch_label(p))
        if self.events is not None:
            self.events.put(rx, at)
        if not seen.outgoing and seen.udp.udp.dst_port == pxe.SERVER_PORT:
            self.on_request(seen)  # replies sent to :67 too: the responder counts them as not_request
