"""Ethernet (+ one 802.1Q tag) / IPv4 / UDP framing for the raw-socket (AF_PACKET) path.

Rules of this file:

1. ``decode_udp_frame(frame)`` returns a :class:`UdpFrame` or raises :class:`MalformedPacket`;
   nothing else escapes. Non-IPv4 and non-UDP frames are MalformedPacket too (reasons ``not_ipv4``,
   ``not_udp``): with the BPF filter of the research note they never arrive, so seeing one means
   the filter leaked, which is worth a metric.
2. Checksums are computed on encode and checked on decode, with two documented exceptions for the
   UDP checksum: 0 means "not computed" (RFC 768), and a *partial* checksum (only the pseudo-header
   sum, left by TX checksum offload: CHECKSUM_PARTIAL over veth/bridge, research note §3 "Checksum
   offload") is accepted unless ``allow_partial=False``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address

from .buffer import Buffer
from .errors import Malformed, MalformedPacket

__all__ = [
    "EtherType", "IpProto", "BROADCAST_MAC", "EthernetHeader", "IPv4Header", "UdpHeader", "UdpFrame",
    "ChecksumState", "decode_udp_frame", "encode_udp_frame", "internet_checksum", "udp_checksum_state",
    "pull_ethernet", "push_ethernet",
]

BROADCAST_MAC = b"\xff" * 6
_ETH = struct.Struct("!6s6sH")
_VLAN = struct.Struct("!HH")
_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")


class EtherType(IntEnum):
    IPV4 = 0x0800
    VLAN = 0x8100  # IEEE 802.1Q
    QINQ = 0x88A8  # IEEE 802.1ad outer tag: accepted as "one tag" too
    IPV6 = 0x86DD


class IpProto(IntEnum):
    UDP = 17


class ChecksumState(IntEnum):
    VALID = 0
    ABSENT = 1  # field is 0: sender did not compute it (RFC 768 allows this for IPv4)
    PARTIAL = 2  # field holds only the folded pseudo-header sum (TX offload not yet done)
    BAD = 3


@dataclass(slots=True, frozen=True)
class EthernetHeader:
    dst: bytes
    src: bytes
    ethertype: int
    vlan_tci: int | None = None  # 802.1Q TCI (PCP/DEI/VID) when the frame carried one tag
    vlan_tpid: int = EtherType.VLAN

    @property
    def vlan_id(self) -> int | None:
        return None if self.vlan_tci is None else self.vlan_tci & 0x0FFF


@dataclass(slots=True, frozen=True)
class IPv4Header:
    src: IPv4Address
    dst: IPv4Address
    ttl: int
    protocol: int
    ident: int
    tos: int
    options: bytes  # IP options (IHL > 5), kept verbatim


@dataclass(slots=True, frozen=True)
class UdpHeader:
    src_port: int
    dst_port: int
    checksum: int
    checksum_state: ChecksumState


@dataclass(slots=True, frozen=True)
class UdpFrame:
    eth: EthernetHeader
    ip: IPv4Header
    udp: UdpHeader
    payload: bytes


def internet_checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 one's-complement sum (https://www.rfc-editor.org/rfc/rfc1071), not inverted."""
    if len(data) % 2:
        data += b"\0"
    # int.from_bytes over the whole buffer, then fold: one C call instead of a per-word loop.
    # Summing 16-bit words equals the big number folded modulo 0xffff (end-around carry).
    total = initial + int.from_bytes(data, "big") % 0xFFFF if data else initial
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _fold_sum(data: bytes) -> int:
    s = internet_checksum(data)
    # the modulo trick maps an all-0xffff sum to 0; both are "negative zero" in one's complement,
    # and 0xffff is what a word-wise sum returns, so keep it for comparisons with wire values
    return 0xFFFF if s == 0 and any(data) else s


def _pseudo_header(src: bytes, dst: bytes, length: int) -> bytes:
    return src + dst + struct.pack("!BBH", 0, IpProto.UDP, length)


def udp_checksum_state(src: bytes, dst: bytes, udp_segment: bytes) -> ChecksumState:
    """Classify the checksum in ``udp_segment`` (header + payload, as on the wire)."""
    wire = (udp_segment[6] << 8) | udp_segment[7]
    if wire == 0:
        return ChecksumState.ABSENT
    length = len(udp_segment)
    if _fold_sum(_pseudo_header(src, dst, length) + udp_segment) == 0xFFFF:
        return ChecksumState.VALID
    # CHECKSUM_PARTIAL: the kernel stored ~csum_tcpudp_magic(...) = the folded pseudo-header sum
    if wire == _fold_sum(_pseudo_header(src, dst, length)):
        return ChecksumState.PARTIAL
    return ChecksumState.BAD


def pull_ethernet(buf: Buffer) -> EthernetHeader:
    dst, src, ethertype = buf.pull_struct(_ETH)
    if ethertype in (EtherType.VLAN, EtherType.QINQ):
        # one tag only: https://standards.ieee.org/ieee/802.1Q/ ; a second tag is left to the caller
        tci, inner = buf.pull_struct(_VLAN)
        return EthernetHeader(dst, src, inner, tci, ethertype)
    return EthernetHeader(dst, src, ethertype)


def push_ethernet(buf: Buffer, eth: EthernetHeader) -> None:
    if eth.vlan_tci is None:
        buf.push_struct(_ETH, eth.dst, eth.src, eth.ethertype)
    else:
        buf.push_struct(_ETH, eth.dst, eth.src, eth.vlan_tpid)
        buf.push_struct(_VLAN, eth.vlan_tci, eth.ethertype)


def decode_udp_frame(frame: bytes, *, verify_checksums: bool = True, allow_partial: bool = True) -> UdpFrame:
    """Decode an Ethernet frame carrying IPv4/UDP. Trailing Ethernet padding is ignored."""
    data = bytes(frame)
    buf = Buffer(data)
    try:
        eth = pull_ethernet(buf)
    except ValueError:
        raise MalformedPacket(Malformed.TRUNCATED, "ethernet header") from None
    if eth.ethertype != EtherType.IPV4:
        raise MalformedPacket(Malformed.NOT_IPV4, f"ethertype 0x{eth.ethertype:04x}")
    # https://www.rfc-editor.org/rfc/rfc791#section-3.1
    off = buf.tell()
    if len(data) - off < _IP.size:
        raise MalformedPacket(Malformed.TRUNCATED, "ipv4 header")
    vihl, tos, total, ident, frag, ttl, proto, _csum, src, dst = _IP.unpack_from(data, off)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20:
        raise MalformedPacket(Malformed.BAD_IP_HEADER, f"version/ihl 0x{vihl:02x}")
    if total < ihl or off + total > len(data):
        raise MalformedPacket(Malformed.TRUNCATED if off + total > len(data) else Malformed.BAD_IP_HEADER,
                              f"ip total length {total}, frame has {len(data) - off}")
    if verify_checksums and _fold_sum(data[off : off + ihl]) != 0xFFFF:
        raise MalformedPacket(Malformed.BAD_IP_CHECKSUM)
    if frag & 0x3FFF:  # MF set or offset != 0
        raise MalformedPacket(Malformed.IP_FRAGMENT)
    if proto != IpProto.UDP:
        raise MalformedPacket(Malformed.NOT_UDP, f"protocol {proto}")
    ip = IPv4Header(IPv4Address(src), IPv4Address(dst), ttl, proto, ident, tos, data[off + 20 : off + ihl])
    # https://www.rfc-editor.org/rfc/rfc768
    u = off + ihl
    end = off + total
    if end - u < _UDP.size:
        raise MalformedPacket(Malformed.TRUNCATED, "udp header")
    sport, dport, ulen, ucsum = _UDP.unpack_from(data, u)
    if ulen < 8 or u + ulen > end:
        raise MalformedPacket(Malformed.BAD_UDP_LENGTH, f"udp length {ulen}, ip payload {end - u}")
    segment = data[u : u + ulen]
    if verify_checksums:
        state = udp_checksum_state(src, dst, segment)
        if state == ChecksumState.BAD or (state == ChecksumState.PARTIAL and not allow_partial):
            raise MalformedPacket(Malformed.BAD_UDP_CHECKSUM, f"0x{ucsum:04x} ({state.name.lower()})")
    else:
        state = ChecksumState.ABSENT if ucsum == 0 else ChecksumState.VALID
    return UdpFrame(eth, ip, UdpHeader(sport, dport, ucsum, state), segment[8:])


def encode_udp_frame(
    *, src_mac: bytes, dst_mac: bytes, src_ip: IPv4Address, dst_ip: IPv4Address, src_port: int,
    dst_port: int, payload: bytes, vlan_tci: int | None = None, ttl: int = 64, ident: int = 0,
    tos: int = 0, udp_checksum: bool = True,
) -> bytes:
    """Build Ethernet/IPv4/UDP with both checksums. ``udp_checksum=False`` sends 0, which iPXE
    accepts (research note §5); computing it costs microseconds, so it is on by default."""
    if len(src_mac) != 6 or len(dst_mac) != 6:
        raise ValueError("MAC addresses are 6 bytes")
    ulen = 8 + len(payload)
    if 20 + ulen > 0xFFFF:
        raise ValueError("payload too large for one IPv4 datagram")
    s, d = src_ip.packed, dst_ip.packed
    csum = 0
    if udp_checksum:
        csum = ~_fold_sum(_pseudo_header(s, d, ulen) + _UDP.pack(src_port, dst_port, ulen, 0) + payload) & 0xFFFF
        csum = csum or 0xFFFF  # RFC 768: a computed 0 is sent as all ones
    udp = _UDP.pack(src_port, dst_port, ulen, csum) + payload
    hdr = _IP.pack(0x45, tos, 20 + ulen, ident, 0, ttl, IpProto.UDP, 0, s, d)
    hdr = hdr[:10] + struct.pack("!H", ~_fold_sum(hdr) & 0xFFFF) + hdr[12:]
    buf = Buffer()
    push_ethernet(buf, EthernetHeader(dst_mac, src_mac, EtherType.IPV4, vlan_tci))
    buf.push_bytes(hdr)
    buf.push_bytes(udp)
    return buf.data
