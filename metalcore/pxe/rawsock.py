"""The AF_PACKET socket the DHCP watcher reads and the ProxyDHCP responder writes (the syscall seam).

Why AF_PACKET and not a UDP socket on :67: the watcher must see *every* DHCP packet on the PXE link,
including the site DHCP server's replies and requests a UDP socket would never be handed (unicast to
another server), and it must not need port 67 (the site dnsmasq may own it). Recipe and measurements:
research note pxe-on-this-machine.md §3 (sniff.py) and gotchas 8-11.

* A classic BPF program (``tcpdump -i lo -dd 'ip and udp and (port 67 or port 68 or port 4011)'``)
  is attached with SO_ATTACH_FILTER **before** ``bind()`` (gotcha 10), so the kernel drops every other
  frame: 0 of 100,000 non-DHCP frames reached user space in the research runs.
* PACKET_AUXDATA tells, per frame, whether TX checksum offload left the UDP checksum unfinished
  (TP_STATUS_CSUMNOTREADY: kernel-sent UDP over veth/bridges, gotcha 8); such a frame must not be
  checksum-verified.
* PACKET_FANOUT (optional) spreads frames over several sockets/processes by flow hash. Note: every
  DHCP DISCOVER has the same flow (0.0.0.0:68 -> 255.255.255.255:67), so PACKET_FANOUT_HASH sends all
  of them to one member; spreading a DHCP load would need PACKET_FANOUT_CBPF on chaddr.
* PACKET_STATISTICS gives the kernel's drop count (reading resets it, gotcha 11).
* Receive path: a PACKET_RX_RING (TPACKET_V2) shared with the kernel by mmap (packet_mmap.rst). A frame
  is read from memory; the loop makes a poll() only when the ring is empty. Per answered request that
  is a recvmsg less (and no ancillary-data objects), and no GIL release while frames are queued: a
  helper thread cannot slip in between two queued frames. With the lighter fast path (tallies, events
  budget) the stage went from 41k to 63k-117k offers/s at 32 in flight, 8-9 µs of CPU per offer
  (docs/benchmarks-pxe.md, "Run 2026-11-25 07:25" and after). V2 and not V3: V3 hands a block over
  only when it is full or its timer (>= 1 ms) expires, a latency floor that a DHCP answer at 1 request
  in flight must not have. The status word carries TP_STATUS_CSUMNOTREADY, so PACKET_AUXDATA is not
  needed on this path (it stays set for the recvmsg fallback, ``ring=False``).
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import select
import socket
import struct
from dataclasses import dataclass

from metalcore.net.netns import in_netns

__all__ = ["PacketSocket", "Received", "RxRing", "DHCP_BPF", "interface_mac"]

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
PACKET_FANOUT = 18
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
TP_STATUS_CSUMNOTREADY = 1 << 3
PACKET_RX_RING = 5
PACKET_VERSION = 10
TPACKET_V2 = 1
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
_TP2_HDR = struct.Struct("IIIHH")  # struct tpacket2_hdr: tp_status, tp_len, tp_snaplen, tp_mac, tp_net
_TP2_HDRLEN = 32  # TPACKET_ALIGN(sizeof(struct tpacket2_hdr)); struct sockaddr_ll follows
_SLL_PKTTYPE = _TP2_HDRLEN + 10  # sockaddr_ll.sll_pkttype
_SLL_END = _TP2_HDRLEN + 20  # sizeof(struct sockaddr_ll): frame data never starts before this
_U32 = struct.Struct("I")
# Ring geometry: 2 KiB frames hold any frame of a 1500-byte MTU link with a VLAN tag (the kernel puts the
# MAC header at offset ~66); 8192 frames (16 MiB of kernel memory, 256 blocks of 64 KiB) are 200 ms of
# a 40k/s flood: twice what the former 4 MiB receive buffer held (~2-3k frames of ~400 bytes at their
# skb truesize). 4096 dropped 388 of 200k frames at 40k/s at load average 37 (bench --only drops). A
# longer frame arrives truncated (tp_snaplen < tp_len) and fails to decode (MalformedPacket): no DHCP
# client sends jumbo frames.
RING_FRAME_SIZE = 2048
RING_BLOCK_SIZE = 1 << 16
RING_BLOCKS = 256
_AUX = struct.Struct("IIIHHHH")  # struct tpacket_auxdata
_AUX_SPACE = socket.CMSG_SPACE(_AUX.size)

# tcpdump -i lo -dd 'ip and udp and (port 67 or port 68 or port 4011)' (tcpdump 4.99.3): IPv4, UDP,
# not a non-first fragment, source or destination port 67, 68 or 4011.
DHCP_BPF = (
    (0x28, 0, 0, 0x0000000C), (0x15, 0, 14, 0x00000800), (0x30, 0, 0, 0x00000017),
    (0x15, 0, 12, 0x00000011), (0x28, 0, 0, 0x00000014), (0x45, 10, 0, 0x00001FFF),
    (0xB1, 0, 0, 0x0000000E), (0x48, 0, 0, 0x0000000E), (0x15, 6, 0, 0x00000043),
    (0x15, 5, 0, 0x00000044), (0x15, 4, 0, 0x00000FAB), (0x48, 0, 0, 0x00000010),
    (0x15, 2, 0, 0x00000043), (0x15, 1, 0, 0x00000044), (0x15, 0, 1, 0x00000FAB),
    (0x06, 0, 0, 0x00040000), (0x06, 0, 0, 0x00000000),
)


@dataclass(slots=True)
class Received:
    frame: bytes
    pkttype: int  # socket.PACKET_HOST/BROADCAST/OUTGOING/...
    csum_not_ready: bool  # TX offload: the UDP checksum is not filled in yet, do not verify it

    @property
    def outgoing(self) -> bool:
        return self.pkttype == socket.PACKET_OUTGOING


def attach_filter(sock: socket.socket, program=DHCP_BPF) -> None:
    prog = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
    # struct sock_fprog {u16 len; struct sock_filter *filter;}: 'HL' is 16 bytes on x86-64. The kernel
    # copies the program during setsockopt, so the buffer only has to live until then.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(program), ctypes.addressof(prog)))


def interface_mac(iface: str, netns: str = "") -> bytes:
    with in_netns(netns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.bind((iface, 0))
        return s.getsockname()[4][:6]
    finally:
        s.close()


class RxRing:
    """Reader of a TPACKET_V2 receive ring: ``buf`` is the mmap shared with the kernel (or any writable
    buffer: the unit tests fill one by hand), ``wait(timeout_ms)`` blocks until the kernel signals a
    frame (poll) and returns False on timeout.

    The kernel owns a frame while its status is TP_STATUS_KERNEL; it fills it in and sets
    TP_STATUS_USER; we copy the frame out and hand the slot back (status 0). Frames are written and
    read in ring order. Nothing in a header is trusted: a frame whose offsets point outside its slot
    is handed back and returned as an empty frame (it fails to decode and is counted as malformed)."""

    def __init__(self, buf, frame_size: int, frames: int, wait) -> None:
        self.buf = buf
        self.frame_size = frame_size
        self.frames = frames
        self.wait = wait
        self.timeout_ms = -1
        self.index = 0
        self.resyncs = 0

    def _find_ready(self) -> bool:
        """The kernel says a frame is ready but ours is not: we lost step (cannot happen as long as both
        sides go in ring order; this keeps the loop from spinning on poll if it ever does)."""
        buf, fs, n = self.buf, self.frame_size, self.frames
        for k in range(1, n):
            i = (self.index + k) % n
            if _U32.unpack_from(buf, i * fs)[0] & TP_STATUS_USER:
                self.index = i
                self.resyncs += 1
                return True
        return False

    def recv(self) -> Received:
        buf, off = self.buf, self.index * self.frame_size
        if not _U32.unpack_from(buf, off)[0] & TP_STATUS_USER:
            while True:
                if not self.wait(self.timeout_ms):
                    raise TimeoutError("no frame")
                if _U32.unpack_from(buf, off)[0] & TP_STATUS_USER or self._find_ready():
                    break
            off = self.index * self.frame_size
        status, _length, snaplen, mac, _net = _TP2_HDR.unpack_from(buf, off)
        end = mac + snaplen
        frame = buf[off + mac:off + end] if _SLL_END <= mac and end <= self.frame_size else b""
        pkttype = buf[off + _SLL_PKTTYPE]
        _U32.pack_into(buf, off, TP_STATUS_KERNEL)  # the slot goes back to the kernel (x86: stores in order)
        self.index = self.index + 1 if self.index + 1 < self.frames else 0
        return Received(frame, pkttype, bool(status & TP_STATUS_CSUMNOTREADY))


class PacketSocket:
    """One AF_PACKET socket bound to ``iface`` in network namespace ``netns`` with the DHCP filter."""

    def __init__(self, iface: str, netns: str = "", *, rcvbuf: int = 4 << 20, fanout_group: int | None = None,
                 program=DHCP_BPF, ring: bool = True) -> None:
        self.iface = iface
        self.ring: RxRing | None = None
        self._mm: mmap.mmap | None = None
        self._poll: select.poll | None = None
        with in_netns(netns):  # the socket keeps the namespace it was created in
            # protocol 0: nothing is queued until bind() names the interface and ETH_P_ALL (gotcha 10)
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            attach_filter(s, program)
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)  # not capped by rmem_max (root)
            except PermissionError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            if ring:
                self._map_ring(s)
            s.bind((iface, ETH_P_ALL))
            if fanout_group is not None:
                # packed: with the DEFRAG flag the value is above INT_MAX, which setsockopt(int) refuses
                s.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack(
                    "I", (fanout_group & 0xFFFF) | ((PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) << 16)))
        except BaseException:
            if self._mm is not None:
                self._mm.close()
            s.close()
            raise
        self.sock = s
        self.mac: bytes = s.getsockname()[4][:6]
        self.stats()  # reset the counters

    def _map_ring(self, s: socket.socket) -> None:
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        frames = RING_BLOCK_SIZE // RING_FRAME_SIZE * RING_BLOCKS
        s.setsockopt(SOL_PACKET, PACKET_RX_RING,
                     struct.pack("IIII", RING_BLOCK_SIZE, RING_BLOCKS, RING_FRAME_SIZE, frames))
        self._mm = mmap.mmap(s.fileno(), RING_BLOCK_SIZE * RING_BLOCKS, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self._poll = select.poll()
        self._poll.register(s.fileno(), select.POLLIN | select.POLLERR)
        poll = self._poll.poll
        self.ring = RxRing(self._mm, RING_FRAME_SIZE, frames, lambda ms: bool(poll(ms)))
        self.recv = self.ring.recv  # type: ignore[method-assign]  # the loop calls it per frame

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, t: float | None) -> None:
        if self.ring is not None:  # the socket itself stays blocking: only the ring's poll() waits
            self.ring.timeout_ms = -1 if t is None else max(0, int(t * 1000))
        else:
            self.sock.settimeout(t)

    def recv(self) -> Received:
        data, anc, _flags, addr = self.sock.recvmsg(65535, _AUX_SPACE)
        not_ready = False
        for level, typ, cdata in anc:
            if level == SOL_PACKET and typ == PACKET_AUXDATA and len(cdata) >= _AUX.size:
                not_ready = bool(_AUX.unpack_from(cdata)[0] & TP_STATUS_CSUMNOTREADY)
        return Received(data, addr[2], not_ready)

    def send(self, frame: bytes) -> int:
        return self.sock.send(frame)

    def stats(self) -> tuple[int, int]:
        """(packets, drops) since the last call (the kernel resets them on read; packets include drops)."""
        return struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a view of the ring is still alive somewhere: the socket closes anyway
                pass
        self.sock.close()


def ioctl_ipv4(iface: str, netns: str = "") -> str | None:
    """The interface's primary IPv4 address (SIOCGIFADDR), None if it has none."""
    with in_netns(netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        res = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", iface.encode()[:15]))
        return socket.inet_ntoa(res[20:24])
    except OSError:
        return None
    finally:
        s.close()
