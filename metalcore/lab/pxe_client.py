"""A raw-socket PXE client for tests and benchmarks: sends PXE DISCOVERs (distinct MACs and xids) on an
interface in the machines' namespace and matches the ProxyDHCP offers that come back.

``closed_loop(n_inflight, count, seconds)`` keeps exactly ``n_inflight`` requests outstanding (a new
one goes out when an answer arrives or the oldest times out), so the rate it measures is the
responder's, and the latency is per request (send -> matching offer). ``paced(pps, seconds)`` sends
at a fixed rate for the socket-drop measurement.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from metalcore.net.netns import in_netns
from metalcore.protocol import dhcp, frames
from metalcore.protocol.dhcp import DhcpPacket, MessageType, Option
from metalcore.pxe.rawsock import attach_filter

__all__ = ["PxeClient", "discover_packet", "LoadResult", "CLIENT_BPF"]

# tcpdump -i lo -dd 'ip and udp and dst port 68'
CLIENT_BPF = (
    (0x28, 0, 0, 0x0000000C), (0x15, 0, 8, 0x00000800), (0x30, 0, 0, 0x00000017),
    (0x15, 0, 6, 0x00000011), (0x28, 0, 0, 0x00000014), (0x45, 4, 0, 0x00001FFF),
    (0xB1, 0, 0, 0x0000000E), (0x48, 0, 0, 0x00000010), (0x15, 0, 1, 0x00000044),
    (0x06, 0, 0, 0x00040000), (0x06, 0, 0, 0x00000000),
)
_XID = struct.Struct("!I")


def bench_mac(i: int) -> bytes:
    return bytes((0x02, 0xBE, (i >> 24) & 0xFF, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF))


def discover_packet(mac: bytes, xid: int, *, arch: int = 0, ipxe: bool = True,
                    vendor_class: bytes = b"PXEClient:Arch:00000:UNDI:002001", guid: bytes | None = None,
                    message_type: int = MessageType.DISCOVER) -> DhcpPacket:
    """What QEMU's iPXE ROM sends (research note §3, decoded in full), minus the noise."""
    opts: dict[int, bytes] = {
        Option.MESSAGE_TYPE: bytes((message_type,)),
        Option.MAX_MESSAGE_SIZE: b"\x05\xc0",
        Option.CLIENT_ARCH: arch.to_bytes(2, "big"),
        Option.CLIENT_NDI: b"\x01\x02\x01",
        Option.VENDOR_CLASS: vendor_class,
    }
    if ipxe:
        opts[Option.USER_CLASS] = b"iPXE"
    opts[Option.PARAMETER_REQUEST_LIST] = bytes((1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 175))
    if ipxe:
        opts[Option.IPXE_ENCAP] = b"\x13\x01\x01\x11\x01\x01"  # HTTP=1, PXE=1 feature flags
    opts[Option.CLIENT_ID] = b"\x01" + mac
    opts[Option.CLIENT_GUID] = b"\x00" + (guid or bytes(16))
    return DhcpPacket(op=dhcp.Op.BOOTREQUEST, xid=xid, chaddr=mac + bytes(10), options=opts)


def discover_frame(mac: bytes, xid: int, **kw) -> bytes:
    payload = dhcp.encode(discover_packet(mac, xid, **kw))
    return frames.encode_udp_frame(src_mac=mac, dst_mac=frames.BROADCAST_MAC, src_ip=IPv4Address(0),
                                   dst_ip=IPv4Address("255.255.255.255"), src_port=68, dst_port=67,
                                   payload=payload)


@dataclass
class LoadResult:
    sent: int = 0
    answered: int = 0
    lost: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(q * len(s)))]

    def summary(self) -> dict:
        return {"sent": self.sent, "answered": self.answered, "lost": self.lost, "seconds": round(self.seconds, 3),
                "per_s": round(self.rate), "p50_ms": round(self.percentile(0.5) * 1e3, 3),
                "p99_ms": round(self.percentile(0.99) * 1e3, 3)}


class PxeClient:
    """One AF_PACKET socket on ``iface`` in ``netns``: sends DISCOVERs, receives what goes to port 68."""

    def __init__(self, iface: str, netns: str = "") -> None:
        with in_netns(netns):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        attach_filter(s, CLIENT_BPF)
        s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        s.setsockopt(socket.SOL_SOCKET, 32, 8 << 20)  # SO_SNDBUFFORCE
        s.bind((iface, 0))
        while True:  # frames seen between socket() and bind() came from any interface (gotcha 10)
            r, _, _ = select.select([s], [], [], 0)
            if not r:
                break
            s.recv(65535)
        self.sock = s
        self.mac = s.getsockname()[4][:6]

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, frame: bytes) -> None:
        self.sock.send(frame)

    def replies(self, timeout: float) -> list[tuple[float, frames.UdpFrame, DhcpPacket]]:
        """Everything arriving for port 68 within ``timeout`` seconds (replies only, op 2)."""
        out = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                break
            data, addr = self.sock.recvfrom(65535)
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            try:
                u = frames.decode_udp_frame(data, verify_checksums=False)
                p = dhcp.decode(u.payload)
            except ValueError:
                continue
            if p.op == dhcp.Op.BOOTREPLY:
                out.append((time.monotonic(), u, p))
        return out

    def ask(self, mac: bytes, xid: int, timeout: float = 2.0, **kw) -> list[DhcpPacket]:
        """One DISCOVER; the replies with its xid."""
        self.sock.send(discover_frame(mac, xid, **kw))
        return [p for _t, _u, p in self.replies(timeout) if p.xid == xid]

    def closed_loop(self, inflight: int, *, count: int, seconds: float, macs: int = 1024, timeout: float = 1.0,
                    first_xid: int = 1, arch: int = 0) -> LoadResult:
        """Keep ``inflight`` DISCOVERs outstanding until ``count`` were answered or ``seconds`` passed.

        Frames are prebuilt per MAC (patching only the xid), so the generator's own cost stays small.
        """
        templates = []
        for i in range(macs):
            f = bytearray(discover_frame(bench_mac(i), 0, arch=arch))
            f[40:42] = b"\0\0"  # UDP checksum 0 ("not computed"): the xid changes per request
            templates.append(f)
        xid_off = 14 + 20 + 8 + 4
        res = LoadResult()
        outstanding: dict[int, float] = {}
        sock, perf = self.sock, time.perf_counter
        xid = first_xid
        sock.setblocking(False)
        start = perf()
        end = start + seconds

        def send_one() -> None:
            nonlocal xid
            f = templates[xid % macs]
            _XID.pack_into(f, xid_off, xid)
            try:
                sock.send(f)
            except BlockingIOError:
                select.select([], [sock], [], 0.01)
                sock.send(f)
            outstanding[xid] = perf()
            res.sent += 1
            xid = (xid + 1) & 0xFFFFFFFF or 1

        try:
            for _ in range(inflight):
                send_one()
            while res.answered < count:
                now = perf()
                if now >= end:
                    break
                r, _, _ = select.select([sock], [], [], min(0.05, end - now))
                if r:
                    while True:
                        try:
                            data = sock.recv(2048)
                        except BlockingIOError:
                            break
                        if len(data) < xid_off + 4 or data[xid_off - 4] != 2:  # op must be BOOTREPLY
                            continue
                        x = _XID.unpack_from(data, xid_off)[0]
                        t0 = outstanding.pop(x, None)
                        if t0 is None:
                            continue
                        res.latencies.append(perf() - t0)
                        res.answered += 1
                        send_one()
                now = perf()
                for x, t0 in list(outstanding.items()):
                    if now - t0 > timeout:
                        del outstanding[x]
                        res.lost += 1
                        send_one()
            res.seconds = perf() - start
        finally:
            sock.setblocking(True)
        return res

    def paced(self, pps: int, seconds: float, macs: int = 1024) -> int:
        """Send DISCOVERs at ``pps`` for ``seconds`` (1 ms bursts); returns how many were sent."""
        templates = []
        for i in range(macs):
            f = bytearray(discover_frame(bench_mac(i), 0))
            f[40:42] = b"\0\0"
            templates.append(f)
        xid_off = 14 + 20 + 8 + 4
        sent, start, perf = 0, time.perf_counter(), time.perf_counter
        while (el := perf() - start) < seconds:
            due = int(el * pps) + 1
            while sent < due:
                f = templates[sent % macs]
                _XID.pack_into(f, xid_off, sent + 1)
                try:
                    self.sock.send(f)
                except OSError:
                    pass
                sent += 1
            time.sleep(0.001)
        return sent
