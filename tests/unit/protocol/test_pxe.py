"""ProxyDHCP decisions with the captured DISCOVERs/REQUESTs of real clients (tests/data/dhcp)."""

from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from uuid import UUID

import pytest

from metalcore.protocol import dhcp, pxe
from metalcore.protocol.dhcp import DhcpPacket, MessageType, Option
from metalcore.protocol.frames import decode_udp_frame
from metalcore.protocol.pxe import BootKind, Ignore, IgnoreReason, Reply

DATA = Path(__file__).resolve().parents[2] / "data" / "dhcp"
ME = IPv4Address("10.251.77.1")
SETTINGS = pxe.ProxySettings(server_ip=ME, ipxe_script_url="http://10.251.77.1:4242/ipxe/{mac}",
                             http_boot_base_url="http://10.251.77.1:4242/boot/")


def packet(name: str) -> DhcpPacket:
    return dhcp.decode(decode_udp_frame((DATA / name).read_bytes()).payload)


def with_opts(p: DhcpPacket, **changes: bytes | None) -> DhcpPacket:
    opts = dict(p.options)
    for code, value in changes.items():
        code = int(code[1:])
        if value is None:
            opts.pop(code, None)
        else:
            opts[code] = value
    return replace(p, options=opts)


# -- classification ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, mac, arch, ipxe, http", [
    ("ipxe-bios-discover.bin", "52:54:00:12:34:56", 0, True, False),
    ("ipxe-chainload-discover.bin", "52:54:00:12:34:56", 0, True, False),
    ("ipxe-uefi-discover.bin", "52:54:00:12:34:57", 7, True, False),
    ("edk2-pxe-discover.bin", "52:54:00:12:34:58", 7, False, False),
    ("edk2-pxe-after-ipxe-discover.bin", "52:54:00:12:34:57", 7, False, False),
    ("edk2-http-boot-discover.bin", "52:54:00:12:34:59", 16, False, True),
    ("udhcpc-discover.bin", "52:54:00:00:00:01", 7, True, False),
    ("dhclient-discover.bin", "52:54:00:00:00:02", 7, True, False),
])
def test_client_info_of_real_clients(name, mac, arch, ipxe, http):
    p = packet(name)
    assert pxe.is_pxe_client(p)
    info = pxe.client_info(p)
    assert (info.mac, info.arch, info.is_ipxe, info.http_boot) == (mac, arch, ipxe, http)
    assert info.message_type is MessageType.DISCOVER


def test_guid_and_vendor_class():
    info = pxe.client_info(packet("ipxe-bios-discover.bin"))
    assert info.guid == UUID("11223344-5566-7788-99aa-bbccddeeff00")
    assert info.vendor_class == "PXEClient:Arch:00000:UNDI:002001" and info.ndi == (1, 2, 1)


def test_non_utf8_vendor_class_and_broken_optional_options_do_not_crash():
    p = with_opts(packet("edk2-pxe-discover.bin"), o60=b"PXEClient:\xff\xfe\x80", o97=b"\x01\x02", o94=b"")
    info = pxe.client_info(p)
    assert info.vendor_class == "PXEClient:\\xff\\xfe\\x80" and info.guid is None and info.ndi is None
    assert isinstance(pxe.handle_request(p, SETTINGS), Reply)


# -- the boot-file table ----------------------------------------------------------------------------
def _info(arch: int | None, *, ipxe=False, http=False) -> pxe.ClientInfo:
    return pxe.ClientInfo(mac="aa:bb:cc:dd:ee:ff", xid=1, message_type=1, arch=arch,
                          archs=() if arch is None else (arch,), vendor_class="PXEClient", user_classes=(),
                          guid=None, ndi=None, is_ipxe=ipxe, http_boot=http)


@pytest.mark.parametrize("arch, kind, file", [
    (0, BootKind.TFTP, "undionly.kpxe"),
    (6, BootKind.TFTP, "ipxe-i386.efi"),
    (7, BootKind.TFTP, "ipxe.efi"),
    (9, BootKind.TFTP, "ipxe.efi"),
    (11, BootKind.TFTP, "ipxe-arm64.efi"),
    (16, BootKind.HTTP, "http://10.251.77.1:4242/boot/ipxe.efi"),
    (19, BootKind.HTTP, "http://10.251.77.1:4242/boot/ipxe-arm64.efi"),
])
def test_boot_file_table(arch, kind, file):
    assert pxe.choose_boot_file(_info(arch), SETTINGS) == pxe.BootChoice(kind, file)


def test_ipxe_user_class_wins_over_arch_and_snponly_switch():
    assert pxe.choose_boot_file(_info(7, ipxe=True), SETTINGS) == pxe.BootChoice(
        BootKind.HTTP, "http://10.251.77.1:4242/ipxe/aa:bb:cc:dd:ee:ff")
    snp = replace(SETTINGS, boot_files=pxe.BootFiles(snponly=True))
    assert pxe.choose_boot_file(_info(7), snp).file == "snponly.efi"


@pytest.mark.parametrize("arch", [None, 1, 2, 10, 15, 18, 20, 0xFFFF])
def test_unknown_arch_is_an_outcome(arch):
    out = pxe.choose_boot_file(_info(arch), SETTINGS)
    assert isinstance(out, Ignore) and out.reason is IgnoreReason.UNKNOWN_ARCH


# -- the ProxyDHCPOFFER -----------------------------------------------------------------------------
def test_offer_to_ipxe_bios():
    req = packet("ipxe-bios-discover.bin")
    out = pxe.handle_request(req, SETTINGS, local_port=67)
    assert isinstance(out, Reply)
    r = dhcp.decode(out.payload)
    assert r == out.packet
    assert (r.op, r.xid, r.chaddr, r.flags) == (2, req.xid, req.chaddr, req.flags)
    assert r.yiaddr == dhcp.ZERO_IP and r.siaddr == ME and r.ciaddr == dhcp.ZERO_IP
    assert r.message_type() is MessageType.OFFER and r.server_id() == ME
    assert r.vendor_class() == b"PXEClient"
    assert r.options[Option.VENDOR_SPECIFIC] == b"\x06\x01\x08\xff"  # what booted iPXE (research §5)
    assert r.options[Option.CLIENT_GUID] == req.options[Option.CLIENT_GUID]
    assert r.options[Option.IPXE_ENCAP] == b"\x01\x01\x01\xff"  # 175.1 priority = 1
    assert r.file_name == "http://10.251.77.1:4242/ipxe/52:54:00:12:34:56"
    assert r.options[Option.BOOTFILE_NAME] == r.file  # iPXE asked for 67 in option 55
    assert out.destination == pxe.Destination(IPv4Address("255.255.255.255"), 68, b"\xff" * 6, True)
    assert len(out.payload) >= dhcp.MIN_BOOTP_SIZE


def test_offer_to_edk2_pxe_is_tftp_without_ipxe_options():
    out = pxe.handle_request(packet("edk2-pxe-discover.bin"), SETTINGS)
    assert isinstance(out, Reply)
    r = out.packet
    assert r.file == b"ipxe.efi" and r.siaddr == ME and Option.IPXE_ENCAP not in r.options
    assert r.broadcast and out.destination.broadcast


def test_offer_to_uefi_http_boot_says_httpclient():
    out = pxe.handle_request(packet("edk2-http-boot-discover.bin"), SETTINGS)
    assert isinstance(out, Reply)
    assert out.packet.vendor_class() == b"HTTPClient"
    assert out.packet.file_name == "http://10.251.77.1:4242/boot/ipxe.efi"
    assert Option.VENDOR_SPECIFIC not in out.packet.options


def test_long_url_goes_to_option_67_only():
    long = replace(SETTINGS, ipxe_script_url="http://10.251.77.1:4242/" + "x" * 120 + "/{mac}")
    r = pxe.handle_request(packet("ipxe-bios-discover.bin"), long).packet
    assert r.file == b"" and r.options[Option.BOOTFILE_NAME].endswith(b"/52:54:00:12:34:56")


def test_priority_is_signed():
    neg = replace(SETTINGS, ipxe_priority=-1)
    r = pxe.handle_request(packet("ipxe-bios-discover.bin"), neg).packet
    assert r.options[Option.IPXE_ENCAP] == b"\x01\x01\xff\xff"


# -- what is ignored --------------------------------------------------------------------------------
@pytest.mark.parametrize("name, port, reason", [
    ("dnsmasq-offer-partial-csum.bin", 67, IgnoreReason.NOT_REQUEST),  # replies to replies: never
    ("ipxe-bios-request.bin", 67, IgnoreReason.WRONG_MESSAGE_TYPE),  # REQUEST on 67 is the site's
    ("ipxe-bios-discover.bin", 4011, IgnoreReason.WRONG_MESSAGE_TYPE),
])
def test_ignored(name, port, reason):
    out = pxe.handle_request(packet(name), SETTINGS, local_port=port)
    assert isinstance(out, Ignore) and out.reason is reason


def test_not_pxe_and_not_ethernet():
    p = packet("ipxe-bios-discover.bin")
    assert pxe.handle_request(with_opts(p, o60=None), SETTINGS).reason is IgnoreReason.NOT_PXE
    assert pxe.handle_request(with_opts(p, o60=b"booted-initrd"), SETTINGS).reason is IgnoreReason.NOT_PXE
    assert pxe.handle_request(replace(p, htype=6), SETTINGS).reason is IgnoreReason.BAD_HTYPE
    assert pxe.handle_request(replace(p, hlen=8), SETTINGS).reason is IgnoreReason.BAD_HLEN
    assert pxe.handle_request(with_opts(p, o53=b""), SETTINGS).reason is IgnoreReason.WRONG_MESSAGE_TYPE
    no_arch = with_opts(packet("edk2-pxe-discover.bin"), o93=None)
    assert pxe.handle_request(no_arch, SETTINGS).reason is IgnoreReason.UNKNOWN_ARCH


# -- port 4011 --------------------------------------------------------------------------------------
def _proxy_request(src_ip="10.251.77.158", **kw) -> DhcpPacket:
    p = packet("ipxe-bios-request.bin")
    p = with_opts(p, **{"o53": b"\x03", "o54": ME.packed, "o50": None, **kw})
    return replace(p, ciaddr=IPv4Address(src_ip), xid=0)  # iPXE sends xid 0 on 4011 (research §8)


def test_port_4011_request_gets_an_ack_to_its_source_port():
    req = _proxy_request()
    for sport in (68, 4011):  # iPXE sends from 68, EDK2 from 4011
        out = pxe.handle_request(req, SETTINGS, local_port=4011, source=(IPv4Address("10.251.77.158"), sport))
        assert isinstance(out, Reply)
        assert out.packet.message_type() is MessageType.ACK and out.packet.ciaddr == req.ciaddr
        assert out.destination == pxe.Destination(IPv4Address("10.251.77.158"), sport, req.chaddr[:6], False)


def test_port_4011_for_another_server_is_ignored_and_boot_item_is_echoed():
    out = pxe.handle_request(_proxy_request(o54=b"\x0a\0\0\x02"), SETTINGS, local_port=4011,
                             source=(IPv4Address("10.251.77.158"), 68))
    assert out.reason is IgnoreReason.OTHER_SERVER
    req = _proxy_request(o43=dhcp.encode_pxe_options(dhcp.PxeVendorOptions(boot_item=(0x8000, 0))))
    out = pxe.handle_request(req, SETTINGS, local_port=4011, source=(IPv4Address("10.251.77.158"), 4011))
    assert out.packet.pxe_options().boot_item == (0x8000, 0)


# -- where replies go (RFC 2131 §4.1) ---------------------------------------------------------------
def test_reply_destination_rules():
    p = packet("edk2-pxe-discover.bin")
    relay = replace(p, giaddr=IPv4Address("10.9.0.1"))
    assert pxe.reply_destination(relay, local_port=67) == pxe.Destination(IPv4Address("10.9.0.1"), 67, None, False)
    bound = replace(p, ciaddr=IPv4Address("10.251.77.7"), flags=0)
    assert pxe.reply_destination(bound, local_port=67) == pxe.Destination(
        IPv4Address("10.251.77.7"), 68, p.chaddr[:6], False)
    assert pxe.reply_destination(replace(p, flags=0), local_port=67).ip == IPv4Address("255.255.255.255")
    assert pxe.reply_destination(p, local_port=4011, source=(IPv4Address("0.0.0.0"), 68)).broadcast
    relayed = pxe.handle_request(relay, SETTINGS)
    assert relayed.packet.giaddr == IPv4Address("10.9.0.1")  # RFC 2131 table 3: copied


# -- byte-exact: the replies real firmware booted from (captured by capture.sh proxy-*, see README) ---
LAB = pxe.ProxySettings(server_ip=ME, ipxe_script_url="http://10.251.77.1:8080/ipxe/{mac}",
                        http_boot_base_url="http://10.251.77.1:8080/boot")


@pytest.mark.parametrize("request_file, reply_file, port, source, two_step", [
    ("proxy-ipxe-discover.bin", "metalcore-offer-ipxe.bin", 67, None, False),  # iPXE BIOS fetched the URL
    ("proxy-edk2-discover.bin", "metalcore-offer-edk2.bin", 67, None, False),  # EDK2 PXE TFTP'd ipxe.efi
    ("ipxe-efi-chainload-discover.bin", "metalcore-offer-ipxe-efi.bin", 67, None, False),
    ("proxy2-ipxe-discover.bin", "metalcore-offer-no-file.bin", 67, None, True),  # -> iPXE asked on 4011
    ("proxy-http-discover.bin", "metalcore-offer-http-boot.bin", 67, None, False),  # EDK2 HTTP-booted ipxe.efi
    ("ipxe-proxy-request-4011.bin", "metalcore-ack-4011.bin", 4011, ("10.251.77.163", 68), True),
])
def test_replies_are_byte_identical_to_those_firmware_accepted(request_file, reply_file, port, source, two_step):
    settings = replace(LAB, boot_file_in_offer=not two_step)
    src = (IPv4Address(source[0]), source[1]) if source else None
    out = pxe.handle_request(packet(request_file), settings, local_port=port, source=src)
    assert isinstance(out, Reply)
    captured = decode_udp_frame((DATA / reply_file).read_bytes())
    assert out.payload == captured.payload
    assert (str(out.destination.ip), out.destination.port) == (str(captured.ip.dst), captured.udp.dst_port)


def test_ipxe_sends_its_4011_request_from_port_68_with_the_dhcp_xid():
    f = decode_udp_frame((DATA / "ipxe-proxy-request-4011.bin").read_bytes())
    assert (f.udp.src_port, f.udp.dst_port) == (68, 4011)
    p = dhcp.decode(f.payload)
    assert p.xid == packet("proxy2-ipxe-discover.bin").xid and p.server_id() == ME
    assert p.message_type() is MessageType.REQUEST and p.ciaddr == IPv4Address("10.251.77.163")
