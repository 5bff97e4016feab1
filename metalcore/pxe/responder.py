"""ProxyDHCP: answer PXE clients with what to boot, never with an address.

Which socket sends the ProxyDHCPOFFER: **the raw socket, as a built Ethernet/IPv4/UDP frame.** Both
ways booted iPXE here (research note §5 variants A and E); the raw path was chosen because

* it needs no port 67: binding :67 next to the site dnsmasq works only because dnsmasq happens to set
  SO_REUSEADDR (another DHCP server on the host may not), and a rack host without a local DHCP server
  would otherwise have a second :67 owner to coordinate with;
* the watcher already receives and decodes every DISCOVER on that socket: answering from the same
  loop saves a second receive + decode per packet (the hot path of the offer-rate goal);
* the reply is a broadcast on the PXE link, which we address ourselves (no route, no SO_BINDTODEVICE,
  no SO_BROADCAST), and it can carry the request's 802.1Q tag back.

A reply that must go through the kernel's routing (a relay agent's giaddr: no MAC known) is sent from
the port-4011 UDP socket instead. The port-4011 server is a plain UDP socket bound to our address: the
ProxyDHCPREQUEST is unicast to us, and the answer goes to the request's source port (iPXE sends from 68,
EDK2 from 4011: research note §8).

Rules: never a yiaddr (pxe.py builds the packet, rule 2 there); non-PXE traffic is left alone; an
unknown arch gets no answer, one log line per MAC and minute, and a metric; a machine whose decision
is not "discovery" (allocated, ambiguous, Metal API down and failing closed) gets no answer.
"""

from __future__ import annotations

import socket
import threading
import time
from ipaddress import IPv4Address
from typing import Any

from loguru import logger

from metalcore.boot import Decision
from metalcore.net.netns import in_netns
from metalcore.protocol import dhcp, frames, pxe
from metalcore.protocol.errors import MalformedPacket
from metalcore.protocol.pxe import IgnoreReason, ProxySettings, Reply
from metalcore.pxe.decisions import BootTracker, DecisionGate
from metalcore.pxe.metrics import PxeMetrics
from metalcore.pxe.watch import Seen, arch_label

__all__ = ["Responder", "ProxyPort"]

UNKNOWN_ARCH_LOG_EVERY = 60.0
FAST_CACHE_MAX = 4096
TRACK_EVERY = 1.0  # s; see fast_answer


def fast_key(frame: bytes) -> bytes | None:
    """The request frame without what changes between a client's retransmissions (IP ident and checksum,
    UDP checksum, xid, secs); None if the frame is not plain Ethernet/IPv4 (IHL 5)/UDP to port 67.

    Two frames with the same key get the same reply except for the xid, so a repeat is answered from the
    reply cache without decoding (the hot path of a DHCP storm and of the offer-rate benchmark). A repeat
    with a broken checksum would be answered too: harmless, the answer is the one the valid frame got."""
    if len(frame) < 282 or frame[12] != 8 or frame[13] != 0 or frame[14] != 0x45 or frame[37] != 67 or frame[36]:
        return None
    return frame[:18] + frame[20:24] + frame[26:40] + frame[42:46] + frame[52:]


def _patch_xid(reply: bytes, xid: bytes) -> bytearray:
    """Copy of a cached reply frame with another xid; UDP checksum updated per RFC 1624 eqn. 3."""
    out = bytearray(reply)
    hc = (out[40] << 8) | out[41]
    if hc:
        s = ((~hc & 0xFFFF) + (~((out[46] << 8) | out[47]) & 0xFFFF) + (~((out[48] << 8) | out[49]) & 0xFFFF)
             + ((xid[0] << 8) | xid[1]) + ((xid[2] << 8) | xid[3]))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        hc = (~s & 0xFFFF) or 0xFFFF
        out[40], out[41] = hc >> 8, hc & 0xFF
    out[46:50] = xid
    return out


class Responder:
    """Decides and answers one request at a time; thread-safe (the gate calls back from its pool)."""

    def __init__(self, proxy: ProxySettings, sock: Any, gate: DecisionGate, tracker: BootTracker,
                 metrics: PxeMetrics) -> None:
        self.proxy = proxy
        self.sock = sock
        self.gate = gate
        self.tracker = tracker
        self.metrics = metrics
        self.server_ip = proxy.server_ip
        self.proxy_port: "ProxyPort | None" = None  # for replies the kernel must route (relay)
        self._unknown_logged: dict[str, float] = {}
        self.offers = 0
        self.fast_hits = 0
        self._ignored_children: dict[str, Any] = {}
        self._fast: dict[bytes, tuple[bytes, str, pxe.ClientInfo, Any, Any]] = {}
        self._track_due: dict[str, float] = {}  # mac -> when a cached answer is told to the tracker again
        self._clock = getattr(tracker, "clock", time.monotonic)
        self._track_every = min(TRACK_EVERY, getattr(tracker, "same_window", TRACK_EVERY) / 2)
        # answers from the packet loop's thread count into tallies (no lock per packet); the pool's not
        self._latency_cached = metrics.tally_histogram(metrics.latency.labels("yes"))
        self._latency_asked = metrics.latency.labels("no")

    def is_ours(self, seen: Seen) -> bool:
        p = seen.packet
        return (p.op == dhcp.Op.BOOTREPLY and int(p.yiaddr) == 0
                and p.options.get(dhcp.Option.SERVER_ID) == self.server_ip.packed
                and (p.options.get(dhcp.Option.VENDOR_CLASS) or b"").startswith((b"PXEClient", b"HTTPClient")))

    def ignore(self, reason: str) -> None:
        child = self._ignored_children.get(reason)
        if child is None:
            child = self._ignored_children[reason] = self.metrics.ignored.labels(reason)
        child.inc()

    # --- port 67, from the watcher ------------------------------------------------------------------
    def on_request(self, seen: Seen) -> None:
        result = pxe.handle_request(seen.packet, self.proxy, local_port=pxe.SERVER_PORT)
        if isinstance(result, pxe.Ignore):
            self._ignored(seen.packet, result)
            return
        mac = result.info.mac
        decision = self.gate.get(mac)
        if decision is not None:
            self._answer(result, decision, seen, cached=True)
            return
        self.gate.ask(mac, lambda d: self._answer(result, d, seen, cached=False))

    def fast_answer(self, frame: bytes, at: float) -> bool:
        """Answer a repeat of an answered request from the reply cache; False: take the slow path."""
        key = fast_key(frame)
        if key is None:
            return False
        hit = self._fast.get(key)
        if hit is None:
            return False
        reply, mac, info, packet_child, offer_child = hit
        decision = self.gate.get(mac)
        if decision is None or decision.response is None:
            return False  # expired or changed: decode, ask again, decide again
        xid = frame[46:50]
        try:
            self.sock.send(_patch_xid(reply, xid))
        except OSError:
            return False
        self._latency_cached.observe(time.perf_counter() - at)
        packet_child.n += 1  # Tally.inc() inlined: this is the hot path
        offer_child.n += 1
        self.offers += 1
        self.fast_hits += 1
        # A repeat within a second of the MAC's last tracked answer is the same boot attempt whatever its
        # xid (BootTracker's same_window is longer): telling the tracker once a second keeps its sliding
        # window alive without its lock and bookkeeping on every packet of a retry storm.
        now = self._clock()
        if now >= self._track_due.get(mac, 0.0):
            if len(self._track_due) >= FAST_CACHE_MAX:
                self._track_due.clear()
            self._track_due[mac] = now + self._track_every
            self.tracker.answered(info, decision, int.from_bytes(xid, "big"))
        return True

    def _ignored(self, packet: dhcp.DhcpPacket, ign: pxe.Ignore) -> None:
        self.ignore(ign.reason.value)
        if ign.reason is IgnoreReason.UNKNOWN_ARCH:
            self.metrics.unknown_arch.inc()
            mac, now = packet.mac, time.monotonic()
            if now - self._unknown_logged.get(mac, -1e9) >= UNKNOWN_ARCH_LOG_EVERY:
                if len(self._unknown_logged) > 4096:
                    self._unknown_logged.clear()
                self._unknown_logged[mac] = now
                logger.bind(mac=mac).warning("PXE client {} has {} (option 93 {}): no boot file, not answering",
                                             mac, ign.detail, arch_label(packet))

    def _answer(self, reply: Reply, decision: Decision, seen: Seen, cached: bool) -> None:
        if decision.response is None:
            self.ignore(f"verdict_{decision.verdict.value}")
            return
        dest = reply.destination
        try:
            if dest.mac is not None:
                out = frames.encode_udp_frame(
                    src_mac=self.sock.mac, dst_mac=dest.mac, src_ip=self.server_ip, dst_ip=dest.ip,
                    src_port=pxe.SERVER_PORT, dst_port=dest.port, payload=reply.payload,
                    vlan_tci=seen.udp.eth.vlan_tci)
                self.sock.send(out)
                self._remember(seen, out, reply)
            elif self.proxy_port is not None:
                self.proxy_port.sendto(reply.payload, (str(dest.ip), dest.port))
            else:
                self.ignore("no_route")
                return
        except OSError as e:
            logger.bind(mac=reply.info.mac).warning("could not send the ProxyDHCP offer to {}: {}", reply.info.mac, e)
            self.ignore("send_failed")
            return
        (self._latency_cached if cached else self._latency_asked).observe(time.perf_counter() - seen.at)
        self.metrics.offers.labels("offer", arch_label(seen.packet)).inc()
        self.offers += 1
        self.tracker.answered(reply.info, decision)


    def _remember(self, seen: Seen, out: bytes, reply: Reply) -> None:
        raw = getattr(seen, "raw", None)
        key = fast_key(raw) if raw is not None else None
        if key is None or seen.udp.eth.vlan_tci is not None:
            return
        if len(self._fast) >= FAST_CACHE_MAX:
            self._fast.clear()  # a flood of distinct requests: start over rather than grow
        arch = arch_label(seen.packet)
        self._fast[key] = (bytes(out), reply.info.mac, reply.info,
                           self.metrics.tally(self.metrics.packets.labels("in", "DISCOVER", arch)),
                           self.metrics.tally(self.metrics.offers.labels("offer", arch)))


class ProxyPort:
    """The PXE boot-server port (UDP 4011): ProxyDHCPREQUEST -> ProxyDHCPACK with the boot file."""

    def __init__(self, responder: Responder, netns: str, bind_ip: IPv4Address, port: int = pxe.PROXYDHCP_PORT,
                 decision_timeout: float = 10.0) -> None:
        self.responder = responder
        self.decision_timeout = decision_timeout
        with in_netns(netns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)  # a client without an address (0.0.0.0)
        s.bind((str(bind_ip), port))
        s.settimeout(0.25)
        self.sock = s
        self.port = s.getsockname()[1]
        self.acks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pxe-4011", daemon=True)
        responder.proxy_port = self

    def start(self) -> "ProxyPort":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sock.sendto(data, addr)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError as e:
                if self._stop.is_set():
                    return
                logger.warning("port {} receive failed: {}", self.port, e)
                time.sleep(0.1)
                continue
            try:
                self.handle(data, peer, time.perf_counter())
            except Exception:
                logger.opt(exception=True).error("port {}: handling a request from {} failed", self.port, peer)

    def handle(self, data: bytes, peer: tuple[str, int], at: float) -> None:
        r, m = self.responder, self.responder.metrics
        try:
            packet = dhcp.decode(data)
        except MalformedPacket as e:
            m.malformed.labels(e.reason.value).inc()
            return
        result = pxe.handle_request(packet, r.proxy, local_port=pxe.PROXYDHCP_PORT,
                                    source=(IPv4Address(peer[0]), peer[1]))
        if isinstance(result, pxe.Ignore):
            r._ignored(packet, result)
            return
        decision = r.gate.wait(result.info.mac, self.decision_timeout)
        if decision is None or decision.response is None:
            r.ignore(f"verdict_{decision.verdict.value}" if decision else "decision_timeout")
            return
        dest = result.destination
        self.sock.sendto(result.payload, (str(dest.ip), dest.port))
        self.acks += 1
        m.offers.labels("ack", arch_label(packet)).inc()
        r.tracker.answered(result.info, decision)
