"""DHCP codec against real captured bytes (tests/data/dhcp, see its README) and hand-made edge cases."""

from ipaddress import IPv4Address
from pathlib import Path
from uuid import UUID

import pytest

from metalcore.protocol import dhcp
from metalcore.protocol.dhcp import DhcpPacket, MessageType, Option
from metalcore.protocol.errors import Malformed, MalformedPacket
from metalcore.protocol.frames import decode_udp_frame

DATA = Path(__file__).resolve().parents[2] / "data" / "dhcp"


def payload(name: str) -> bytes:
    return decode_udp_frame((DATA / name).read_bytes()).payload


def test_ipxe_bios_discover_decodes_every_field():
    p = dhcp.decode(payload("ipxe-bios-discover.bin"))
    assert (p.op, p.htype, p.hlen, p.hops, p.flags) == (1, 1, 6, 0, 0)
    assert p.mac == "52:54:00:12:34:56"
    assert p.message_type() is MessageType.DISCOVER
    assert p.vendor_class() == b"PXEClient:Arch:00000:UNDI:002001"
    assert p.client_archs() == (0,)
    assert p.client_ndi() == (1, 2, 1)
    assert p.user_classes() == (b"iPXE",)  # iPXE's plain-string form, not RFC 3004
    # QEMU -smbios type=1,uuid=11223344-5566-7788-99aa-bbccddeeff00; option 97 is little-endian
    assert p.client_guid() == UUID("11223344-5566-7788-99aa-bbccddeeff00")
    assert p.options[Option.MAX_MESSAGE_SIZE] == b"\x05\xc0"
    assert p.options[Option.CLIENT_ID] == b"\x01\x52\x54\x00\x12\x34\x56"
    assert 175 in p.parameter_request_list() and 67 in p.parameter_request_list()
    ipxe = p.ipxe_options()
    assert ipxe[dhcp.IpxeSubOption.VERSION] == b"\x01\x00\x00"  # iPXE 1.0.0 (Debian's 2019 ROM)
    assert ipxe[dhcp.IpxeSubOption.BUS_ID] == b"\x01\x1a\xf4\x10\x00"  # PCI 1af4:1000 virtio-net
    assert dhcp.IpxeSubOption.HTTP in ipxe and dhcp.IpxeSubOption.HTTPS not in ipxe
    assert (p.ciaddr, p.yiaddr, p.siaddr, p.giaddr) == (dhcp.ZERO_IP,) * 4
    assert p.sname == b"" and p.file == b""


def test_udhcpc_sends_rfc3004_user_class_dhclient_a_plain_string():
    assert dhcp.decode(payload("udhcpc-discover.bin")).options[Option.USER_CLASS] == b"\x04iPXE"
    assert dhcp.decode(payload("udhcpc-discover.bin")).user_classes() == (b"iPXE",)
    assert dhcp.decode(payload("dhclient-discover.bin")).options[Option.USER_CLASS] == b"iPXE"
    assert dhcp.decode(payload("dhclient-discover.bin")).user_classes() == (b"iPXE",)


def test_edk2_native_pxe_discover():
    p = dhcp.decode(payload("edk2-pxe-discover.bin"))
    assert p.vendor_class() == b"PXEClient:Arch:00007:UNDI:003000"
    assert p.client_archs() == (7,) and p.user_classes() == ()
    assert p.broadcast  # EDK2 sets the broadcast flag, iPXE does not


def test_dnsmasq_offer():
    p = dhcp.decode(payload("dnsmasq-offer-partial-csum.bin"))
    assert p.op == dhcp.Op.BOOTREPLY and p.message_type() is MessageType.OFFER
    assert p.yiaddr == IPv4Address("10.251.77.135") and p.server_id() == IPv4Address("10.251.77.1")


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.bin")))
def test_every_capture_round_trips(name):
    p = dhcp.decode(payload(name))
    again = dhcp.decode(dhcp.encode(p))
    assert again == p


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.bin")))
def test_every_truncation_of_a_capture_is_malformed_or_decodes(name):
    data = payload(name)
    for n in range(len(data)):
        try:
            dhcp.decode(data[:n])
        except MalformedPacket:
            pass
    with pytest.raises(MalformedPacket) as e:
        dhcp.decode(data[:239])
    assert e.value.reason is Malformed.TRUNCATED


def _raw(options: bytes, *, sname=b"", file=b"", cookie=dhcp.MAGIC_COOKIE, op=1, hlen=6) -> bytes:
    return (bytes((op, 1, hlen, 0)) + b"\x11\x22\x33\x44" + b"\0" * 4 + b"\0" * 16
            + b"\x52\x54\x00\x12\x34\x56".ljust(16, b"\0") + sname.ljust(64, b"\0") + file.ljust(128, b"\0")
            + cookie + options)


def test_split_options_concatenate_rfc3396():
    long_value = bytes(range(256)) * 2  # 512 bytes -> 3 instances
    p = DhcpPacket(op=1, xid=7, options={Option.VENDOR_SPECIFIC: long_value, Option.MESSAGE_TYPE: b"\x01"})
    wire = dhcp.encode(p)
    assert wire.count(b"\x2b\xff") == 2  # two full 255-byte chunks, then the rest
    assert dhcp.decode(wire).options[Option.VENDOR_SPECIFIC] == long_value
    # and hand-split on the wire, with another option in between
    raw = _raw(b"\x3c\x03abc\x35\x01\x01\x3c\x02de\xff")
    assert dhcp.decode(raw).options[Option.VENDOR_CLASS] == b"abcde"


def test_overload_reads_file_then_sname():
    raw = _raw(b"\x34\x01\x03\xff", file=b"\x3c\x02ab\xff", sname=b"\x3c\x01c\x43\x03x.y\xff")
    p = dhcp.decode(raw)
    assert p.options[Option.VENDOR_CLASS] == b"abc"  # options, then file, then sname
    assert p.options[Option.BOOTFILE_NAME] == b"x.y"
    assert p.file == b"" and p.sname == b""
    assert dhcp.decode(dhcp.encode(p)) == p


def test_overload_only_file_keeps_sname():
    p = dhcp.decode(_raw(b"\x34\x01\x01\xff", file=b"\x42\x04tftp\xff", sname=b"server"))
    assert p.options[Option.TFTP_SERVER_NAME] == b"tftp" and p.server_name == "server"


@pytest.mark.parametrize("options, file, reason", [
    (b"\x34\x01\x01\xff", b"\x34\x01\x03\xff", Malformed.OVERLOAD_LOOP),  # 52 inside file
    (b"\x34\x01\x01\x34\x01\x01\xff", b"", Malformed.OVERLOAD_LOOP),  # 52 twice
    (b"\x34\x01\x04\xff", b"", Malformed.BAD_OVERLOAD),
    (b"\x34\x00\xff", b"", Malformed.BAD_OVERLOAD),
    (b"\x34\x01\x01\xff", b"\0" * 125 + b"\x3c\x09a", Malformed.OPTION_OVERRUN),  # overrun in file
    (b"\x3c\x05ab", b"", Malformed.OPTION_OVERRUN),
    (b"\x3c", b"", Malformed.OPTION_OVERRUN),
])
def test_malformed_options(options, file, reason):
    with pytest.raises(MalformedPacket) as e:
        dhcp.decode(_raw(options, file=file))
    assert e.value.reason is reason


def test_header_errors():
    with pytest.raises(MalformedPacket) as e:
        dhcp.decode(_raw(b"\xff", cookie=b"\0\0\0\0"))
    assert e.value.reason is Malformed.BAD_COOKIE
    with pytest.raises(MalformedPacket) as e:
        dhcp.decode(_raw(b"\xff", hlen=17))
    assert e.value.reason is Malformed.BAD_HLEN
    with pytest.raises(MalformedPacket) as e:
        dhcp.decode(_raw(b"\xff", op=3))
    assert e.value.reason is Malformed.BAD_OP
    assert str(Malformed.BAD_OP) == "bad_op"


def test_missing_end_and_padding_are_tolerated():
    assert dhcp.decode(_raw(b"\x35\x01\x01")).message_type() is MessageType.DISCOVER
    assert dhcp.decode(_raw(b"\0\0\x35\x01\x03\0\xff garbage after end")).message_type() is MessageType.REQUEST


def test_typed_option_errors_are_malformed_not_crashes():
    p = DhcpPacket(op=1, xid=1, options={53: b"", 93: b"\x00", 94: b"\x01", 97: b"\x01" * 17, 54: b"\x01"})
    for view in (p.message_type, p.client_archs, p.client_ndi, p.client_guid, p.server_id):
        with pytest.raises(MalformedPacket) as e:
            view()
        assert e.value.reason is Malformed.BAD_OPTION
    assert DhcpPacket(op=1, xid=1, options={53: b"\x63"}).message_type() == 99


def test_user_class_forms():
    assert dhcp.decode_user_class(b"iPXE") == (b"iPXE",)
    assert dhcp.decode_user_class(b"\x04iPXE\x03foo") == (b"iPXE", b"foo")
    assert dhcp.decode_user_class(b"\x09iPXE") == (b"\x09iPXE",)  # length overrun: plain string
    assert dhcp.decode_user_class(b"") == ()
    assert dhcp.encode_user_class([b"iPXE", b"x"]) == b"\x04iPXE\x01x"


def test_pxe_vendor_options_round_trip():
    o = dhcp.PxeVendorOptions(
        discovery_control=8, boot_servers=[(0x8000, [IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")])],
        boot_menu=[(0x8000, b"metal")], menu_prompt=(0, b"PXE"), boot_item=(0x8000, 0), other={200: b"x"})
    wire = dhcp.encode_pxe_options(o)
    assert dhcp.decode_pxe_options(wire) == o
    assert dhcp.encode_pxe_options(dhcp.PxeVendorOptions(discovery_control=8)) == b"\x06\x01\x08\xff"
    with pytest.raises(MalformedPacket):
        dhcp.decode_pxe_options(b"\x08\x02\x80\x00")


def test_encode_rejects_our_own_mistakes():
    for bad in (DhcpPacket(op=1, xid=1, sname=b"x" * 65), DhcpPacket(op=1, xid=1, options={0: b"x"}),
                DhcpPacket(op=1, xid=1, options={255: b""}), DhcpPacket(op=1, xid=2**32),
                DhcpPacket(op=1, xid=1, file=b"a\0")):
        with pytest.raises(ValueError):
            dhcp.encode(bad)


def test_encode_pads_to_bootp_minimum_and_empty_option_survives():
    p = DhcpPacket(op=2, xid=1, options={Option.HOSTNAME: b""})
    wire = dhcp.encode(p)
    assert len(wire) == dhcp.MIN_BOOTP_SIZE
    assert dhcp.decode(wire) == p
    assert len(dhcp.encode(p, min_size=0)) == 240 + 2 + 1


def test_decode_accepts_memoryview_and_bytearray():
    data = payload("udhcpc-discover.bin")
    assert dhcp.decode(memoryview(data)) == dhcp.decode(bytearray(data)) == dhcp.decode(data)
