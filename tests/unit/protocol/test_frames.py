"""Ethernet/IPv4/UDP framing with captured frames, including kernel frames with a partial checksum."""

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from metalcore.protocol import frames
from metalcore.protocol.errors import Malformed, MalformedPacket
from metalcore.protocol.frames import ChecksumState, decode_udp_frame, encode_udp_frame

DATA = Path(__file__).resolve().parents[2] / "data" / "dhcp"


def test_client_frame_has_valid_checksums():
    f = decode_udp_frame((DATA / "ipxe-bios-discover.bin").read_bytes())
    assert f.eth.dst == frames.BROADCAST_MAC and f.eth.src.hex(":") == "52:54:00:12:34:56"
    assert f.eth.vlan_tci is None
    assert (f.ip.src, f.ip.dst) == (IPv4Address("0.0.0.0"), IPv4Address("255.255.255.255"))
    assert (f.udp.src_port, f.udp.dst_port) == (68, 67)
    assert f.udp.checksum_state is ChecksumState.VALID
    assert len(f.payload) == 442 - 14 - 20 - 8


def test_kernel_sent_frame_carries_partial_checksum_from_offload():
    raw = (DATA / "dnsmasq-offer-partial-csum.bin").read_bytes()
    f = decode_udp_frame(raw)
    assert f.udp.checksum_state is ChecksumState.PARTIAL
    with pytest.raises(MalformedPacket) as e:
        decode_udp_frame(raw, allow_partial=False)
    assert e.value.reason is Malformed.BAD_UDP_CHECKSUM
    assert decode_udp_frame(raw, verify_checksums=False).payload == f.payload


def test_encode_then_decode_and_vlan_tag():
    kw = dict(src_mac=b"\x02" * 6, dst_mac=frames.BROADCAST_MAC, src_ip=IPv4Address("10.0.0.1"),
              dst_ip=IPv4Address("255.255.255.255"), src_port=67, dst_port=68, payload=b"hello!!")
    for vlan in (None, 0x2064):
        raw = encode_udp_frame(**kw, vlan_tci=vlan)
        f = decode_udp_frame(raw)
        assert f.payload == b"hello!!" and f.udp.checksum_state is ChecksumState.VALID
        assert f.eth.vlan_tci == vlan and f.eth.ethertype == frames.EtherType.IPV4
        if vlan:
            assert f.eth.vlan_id == 0x064 and raw[12:14] == b"\x81\x00"
    raw = encode_udp_frame(**kw, udp_checksum=False)
    assert decode_udp_frame(raw).udp.checksum_state is ChecksumState.ABSENT


def test_ip_options_and_ethernet_padding():
    raw = bytearray(encode_udp_frame(src_mac=b"\x02" * 6, dst_mac=b"\x04" * 6, src_ip=IPv4Address("1.2.3.4"),
                                     dst_ip=IPv4Address("5.6.7.8"), src_port=1, dst_port=2, payload=b"x"))
    # insert 4 bytes of IP options (NOP NOP NOP EOL), fix IHL, total length and the header checksum
    ip = raw[14:34] + b"\x01\x01\x01\x00"
    ip[0] = 0x46
    ip[2:4] = (len(raw) - 14 + 4).to_bytes(2, "big")
    ip[10:12] = b"\0\0"
    ip[10:12] = (~frames.internet_checksum(bytes(ip)) & 0xFFFF).to_bytes(2, "big")
    framed = bytes(raw[:14] + ip + raw[34:]) + b"\0" * 20  # trailing Ethernet padding
    f = decode_udp_frame(framed)
    assert f.ip.options == b"\x01\x01\x01\x00" and f.payload == b"x"


@pytest.mark.parametrize("mutate, reason", [
    (lambda b: b[:12] + b"\x86\xdd" + b[14:], Malformed.NOT_IPV4),
    (lambda b: b[:23] + b"\x06" + b[24:], Malformed.BAD_IP_CHECKSUM),
    (lambda b: b[:14] + b"\x55" + b[15:], Malformed.BAD_IP_HEADER),
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), Malformed.BAD_UDP_CHECKSUM),
    (lambda b: b[:20], Malformed.TRUNCATED),
    (lambda b: b[:5], Malformed.TRUNCATED),
])
def test_malformed_frames(mutate, reason):
    raw = (DATA / "udhcpc-discover.bin").read_bytes()
    with pytest.raises(MalformedPacket) as e:
        decode_udp_frame(mutate(raw))
    assert e.value.reason is reason


def test_every_truncation_raises_only_malformed():
    raw = (DATA / "ipxe-uefi-discover.bin").read_bytes()
    for n in range(len(raw)):
        with pytest.raises(MalformedPacket):
            decode_udp_frame(raw[:n])


def test_internet_checksum_matches_rfc1071_example():
    # RFC 1071 §3 example: words 0001 f203 f4f5 f6f7 sum to ddf2 (after end-around carry)
    assert frames.internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2
