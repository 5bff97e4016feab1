"""Property tests of the DHCP codec (hypothesis). The coverage-guided twin is atheris_dhcp.py.

1. decode(encode(p)) == p for every packet encode accepts (options without 52: an overload option
   turns sname/file into option space, which tests/unit/protocol/test_dhcp.py covers by hand).
2. Any byte string either decodes or raises MalformedPacket, fed whole and cut at every length
   (h11 fuzz/afl-server.py); the same for Ethernet frames.
"""

from ipaddress import IPv4Address
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metalcore.protocol import dhcp, frames, pxe
from metalcore.protocol.errors import MalformedPacket

DATA = Path(__file__).resolve().parents[1] / "data" / "dhcp"
CAPTURES = [frames.decode_udp_frame(p.read_bytes()).payload for p in sorted(DATA.glob("*.bin"))]
RAW_FRAMES = [p.read_bytes() for p in sorted(DATA.glob("*.bin"))]
SETTINGS = pxe.ProxySettings(server_ip=IPv4Address("10.0.0.1"), ipxe_script_url="http://10.0.0.1/{mac}",
                             http_boot_base_url="http://10.0.0.1/")

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
ip = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
no_trailing_nul = lambda n: st.binary(max_size=n).map(lambda b: b.rstrip(b"\0"))  # noqa: E731
option_codes = st.integers(1, 254).filter(lambda c: c != dhcp.Option.OVERLOAD)

packets = st.builds(
    dhcp.DhcpPacket,
    op=st.sampled_from([1, 2]), xid=st.integers(0, 2**32 - 1), chaddr=st.binary(min_size=16, max_size=16),
    htype=u8, hlen=st.integers(0, 16), hops=u8, secs=u16, flags=u16,
    ciaddr=ip, yiaddr=ip, siaddr=ip, giaddr=ip, sname=no_trailing_nul(64), file=no_trailing_nul(128),
    options=st.dictionaries(option_codes, st.binary(max_size=600), max_size=12),
)


@given(packets)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip(p):
    assert dhcp.decode(dhcp.encode(p)) == p


def _decodes_or_malformed(data: bytes) -> None:
    try:
        p = dhcp.decode(data)
    except MalformedPacket:
        return
    assert dhcp.decode(dhcp.encode(p)) == p
    for port in (67, 4011):
        out = pxe.handle_request(p, SETTINGS, local_port=port, source=(IPv4Address("10.0.0.2"), 68))
        assert isinstance(out, (pxe.Reply, pxe.Ignore))


@given(st.binary(max_size=700))
@settings(max_examples=500)
def test_any_bytes_decode_or_raise_malformed(data):
    _decodes_or_malformed(data)
    _decodes_or_malformed(dhcp.MAGIC_COOKIE.rjust(240, b"\0") + data)  # get past the header checks


@given(st.sampled_from(CAPTURES), st.lists(st.tuples(st.integers(0, 10_000), u8), max_size=8))
@settings(max_examples=500)
def test_mutated_captures_decode_or_raise_malformed(capture, flips):
    data = bytearray(capture)
    for pos, value in flips:
        data[pos % len(data)] = value
    _decodes_or_malformed(bytes(data))


@given(packets)
@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
def test_every_truncation_of_an_encoded_packet(p):
    wire = dhcp.encode(p, min_size=0)
    for n in range(len(wire) + 1):
        _decodes_or_malformed(wire[:n])


def test_every_truncation_of_every_capture():
    for data in CAPTURES:
        for n in range(len(data) + 1):
            _decodes_or_malformed(data[:n])


@given(st.sampled_from(RAW_FRAMES), st.lists(st.tuples(st.integers(0, 10_000), u8), max_size=4),
       st.integers(0, 600))
@settings(max_examples=300)
def test_frames_decode_or_raise_malformed(frame, flips, cut):
    data = bytearray(frame)
    for pos, value in flips:
        data[pos % len(data)] = value
    for candidate in (bytes(data), bytes(data[:cut])):
        try:
            frames.decode_udp_frame(candidate)
        except MalformedPacket:
            pass
