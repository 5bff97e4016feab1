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
* PACKET_FANOUT (optional) spreads frames over several sockets/processes by flow hash.
* PACKET_STATISTICS gives the kernel's drop count (reading resets it, gotcha 11).
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
from dataclasses import dataclass

from metalcore.net.netns import in_netns

__all__ = ["PacketSocket", "Received", "DHCP_BPF", "interface_mac"]

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


class PacketSocket:
    """One AF_PACKET socket bound to ``iface`` in network namespace ``netns`` with the DHCP filter."""

    def __init__(self, iface: str, netns: str = "", *, rcvbuf: int = 4 << 20, fanout_group: int | None = None,
                 program=DHCP_BPF) -> None:
        self.iface = iface
        with in_netns(netns):  # the socket keeps the namespace it was created in
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            attach_filter(s, program)
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)  # not capped by rmem_max (root)
            except PermissionError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            s.bind((iface, 0))
            if fanout_group is not None:
                s.setsockopt(SOL_PACKET, PACKET_FANOUT,
                             (fanout_group & 0xFFFF) | ((PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) << 16))
        except BaseException:
            s.close()
            raise
        self.sock = s
        self.mac: bytes = s.getsockname()[4][:6]
        self.stats()  # reset the counters: frames seen between socket() and bind() do not count

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, t: float | None) -> None:
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
