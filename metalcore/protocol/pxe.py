"""ProxyDHCP decisions for PXE clients: pure functions from a decoded request to an outcome.

Rules of this file:

1. The entry point is :func:`handle_request`; it returns a :class:`Reply` or an :class:`Ignore`,
   never raises for anything a peer can send ("not for us" is an outcome, smee ``IgnorePacketError``).
2. We are a ProxyDHCP server (PXE spec 2.1 §2.2.3 / RFC 4578): we never hand out addresses
   (yiaddr = 0), we only say *what to boot*. The site DHCP server owns the lease.
3. The boot-file table lives here, keyed by the client's arch (option 93) and by whether the
   client is already iPXE (user class ``iPXE``). Names of the binaries come from :class:`BootFiles`.

What the clients do with our answer was measured on this machine (research note
pxe-on-this-machine.md §5, §8): iPXE keeps a reply whose option 60 starts with ``PXEClient`` and
which has a server id as the ProxyDHCP offer, uses it directly if it has siaddr + a boot file, else
asks us on UDP 4011; EDK2's own PXE always asks on 4011 (from source port 4011). Option 175.1
(priority) makes iPXE prefer our boot file over a site DHCP server's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from ipaddress import IPv4Address
from uuid import UUID

from . import dhcp
from .dhcp import DhcpPacket, MessageType, Option
from .errors import MalformedPacket

__all__ = [
    "Arch", "BootKind", "BootFiles", "ProxySettings", "ClientInfo", "BootChoice", "Destination",
    "Reply", "Ignore", "IgnoreReason", "PROXYDHCP_PORT", "SERVER_PORT", "CLIENT_PORT",
    "is_pxe_client", "client_info", "choose_boot_file", "build_proxy_reply", "reply_destination",
    "handle_request",
]

SERVER_PORT = 67
CLIENT_PORT = 68
PROXYDHCP_PORT = 4011  # PXE spec 2.1 §2.2.3: the ProxyDHCPREQUEST goes to the proxy's port 4011
PXE_CLIENT = b"PXEClient"
HTTP_CLIENT = b"HTTPClient"  # UEFI 2.5+ HTTP boot, UEFI spec §24.7.2
IPXE_USER_CLASS = b"iPXE"
BROADCAST_IP = IPv4Address("255.255.255.255")
BROADCAST_MAC = b"\xff" * 6
# PXE spec 2.1 table 2-1, PXE_DISCOVERY_CONTROL bit 3: "if set, and a boot file name is present in
# this packet, download it; do not do boot server discovery". 06 01 08 ff booted iPXE here (§5).
DISCOVERY_CONTROL_USE_BOOTFILE = 8
MAX_FILE_FIELD = 127  # 128-byte field, keep a NUL so C firmware reads a terminated string


class Arch(IntEnum):
    """Option 93 values, https://www.iana.org/assignments/dhcpv6-parameters#processor-architecture
    (RFC 4578 §2.1 lists 0..9; UEFI HTTP boot added 15..19)."""

    X86_BIOS = 0
    EFI_IA32 = 6
    EFI_X86_64 = 7
    EFI_BC = 9  # "EFI byte code" on paper; in practice many x86-64 firmwares send 9 (smee does the same)
    EFI_ARM32 = 10
    EFI_ARM64 = 11
    HTTP_IA32 = 15
    HTTP_X86_64 = 16
    HTTP_ARM32 = 18
    HTTP_ARM64 = 19


class BootKind(Enum):
    TFTP = "tftp"  # file is a name on our TFTP server (siaddr)
    HTTP = "http"  # file is a URL (iPXE script, or UEFI HTTP boot binary)


class IgnoreReason(str, Enum):
    """Why a packet gets no answer; values are metrics labels (same vocabulary as Malformed)."""

    NOT_REQUEST = "not_request"  # op=2: a reply (ours or the site DHCP server's) seen on the wire
    BAD_HTYPE = "bad_htype"  # not Ethernet: we could not address a reply on this link
    BAD_HLEN = "bad_hlen"
    NOT_PXE = "not_pxe"  # option 60 does not start with PXEClient/HTTPClient
    WRONG_MESSAGE_TYPE = "wrong_message_type"  # e.g. REQUEST on 67 (for the site DHCP), RELEASE
    OTHER_SERVER = "other_server"  # a 4011 request naming another server id
    UNKNOWN_ARCH = "unknown_arch"  # option 93 absent/unknown and no iPXE user class
    BAD_OPTION = "bad_option"  # option 53 unusable


@dataclass(frozen=True, slots=True)
class Ignore:
    reason: IgnoreReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class BootFiles:
    """Names of the boot binaries on the TFTP/HTTP server. Defaults are Debian's ``ipxe`` package
    (``dpkg -L ipxe``: /usr/lib/ipxe/{undionly.kpxe,ipxe.efi,snponly.efi}); Debian ships no i386
    or arm64 EFI build, so those two must be provided by the operator under the names below."""

    bios: str = "undionly.kpxe"
    """x86 BIOS (arch 0): iPXE chained through the NIC's PXE UNDI stack."""
    efi_ia32: str = "ipxe-i386.efi"
    """32-bit x86 UEFI (arch 6). Not in Debian's ipxe package (built from ipxe's bin-i386-efi)."""
    efi_x86_64: str = "ipxe.efi"
    """x86-64 UEFI (arch 7 and 9): iPXE with its own NIC drivers."""
    efi_x86_64_snponly: str = "snponly.efi"
    """x86-64 UEFI, using the firmware's SNP driver only (safer on NICs iPXE lacks a driver for)."""
    snponly: bool = False
    """Serve ``efi_x86_64_snponly`` instead of ``efi_x86_64`` to arch 7/9."""
    efi_arm64: str = "ipxe-arm64.efi"
    """ARM64 UEFI (arch 11). Not in Debian's amd64 ipxe package."""


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """What the ProxyDHCP replies say about us. Built once from config by the PXE stage."""

    server_ip: IPv4Address
    """Our address on the rack link: option 54 (server id) and, for TFTP boots, siaddr."""
    ipxe_script_url: str
    """URL template of the per-MAC iPXE script, ``{mac}`` is replaced by ``aa:bb:cc:dd:ee:ff``."""
    http_boot_base_url: str
    """Base URL for UEFI HTTP boot clients (arch 16/19): they get ``<base>/<efi binary>``."""
    boot_files: BootFiles = BootFiles()
    """Names of the iPXE binaries per arch."""
    ipxe_priority: int = 1
    """iPXE option 175.1 (int8). > 0 sorts our settings before the site DHCP server's, so iPXE
    boots our script even when the site DHCP also names a boot file (research note §5 C/D)."""
    next_server: IPv4Address | None = None
    """TFTP server for siaddr, when it is not ``server_ip``."""
    boot_file_in_offer: bool = True
    """True: the OFFER on 67 already names the boot file (one round trip; iPXE and OVMF's own
    EDK2 PXE both boot from it, measured here: tests/data/dhcp/README.md). False: the OFFER carries
    neither siaddr nor a file and iPXE asks again on port 4011 (also measured), but EDK2's PXE then
    gives up with "PXE-E21: Remote boot cancelled", so keep True unless every client is iPXE."""


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What a PXE request tells about the client. Built without raising for any decoded packet."""

    mac: str
    xid: int
    message_type: int | None
    arch: int | None  # first entry of option 93
    archs: tuple[int, ...]
    vendor_class: str  # option 60, undecodable bytes shown as \\xNN (never raises)
    user_classes: tuple[bytes, ...]
    guid: UUID | None
    ndi: tuple[int, int, int] | None
    is_ipxe: bool  # user class "iPXE": already running iPXE, wants a script, not a binary
    http_boot: bool  # option 60 starts with HTTPClient (UEFI HTTP boot)


@dataclass(frozen=True, slots=True)
class BootChoice:
    kind: BootKind
    file: str  # TFTP file name or URL


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a reply goes. ``mac`` is the Ethernet destination for the raw-socket path; None means
    'let the kernel resolve it' (relay agent, or a client that already has an address)."""

    ip: IPv4Address
    port: int
    mac: bytes | None
    broadcast: bool


@dataclass(frozen=True, slots=True)
class Reply:
    packet: DhcpPacket
    payload: bytes  # dhcp.encode(packet), ready for sendto()
    destination: Destination
    info: ClientInfo
    choice: BootChoice


def is_pxe_client(packet: DhcpPacket) -> bool:
    """Option 60 begins with PXEClient (PXE spec 2.1 §2.2.1) or HTTPClient (UEFI HTTP boot)."""
    vc = packet.options.get(Option.VENDOR_CLASS)
    return vc is not None and (vc.startswith(PXE_CLIENT) or vc.startswith(HTTP_CLIENT))


def _safe(fn, default):
    try:
        return fn()
    except MalformedPacket:
        return default


def client_info(packet: DhcpPacket) -> ClientInfo:
    """Extract the PXE facts. A malformed optional option becomes None/() instead of an error:
    one bad GUID must not stop a machine from booting."""
    archs = _safe(packet.client_archs, ())
    vc = packet.options.get(Option.VENDOR_CLASS, b"")
    user_classes = packet.user_classes()
    return ClientInfo(
        mac=packet.mac,
        xid=packet.xid,
        message_type=_safe(packet.message_type, None),
        arch=archs[0] if archs else None,
        archs=archs,
        vendor_class=vc.decode("ascii", "backslashreplace"),
        user_classes=user_classes,
        guid=_safe(packet.client_guid, None),
        ndi=_safe(packet.client_ndi, None),
        is_ipxe=IPXE_USER_CLASS in user_classes,
        http_boot=vc.startswith(HTTP_CLIENT),
    )


def choose_boot_file(info: ClientInfo, settings: ProxySettings) -> BootChoice | Ignore:
    """The boot-file table (smee ``ArchToBootFile``). iPXE gets its script; firmware gets iPXE."""
    if info.is_ipxe:
        return BootChoice(BootKind.HTTP, settings.ipxe_script_url.format(mac=info.mac))
    files = settings.boot_files
    arch = info.arch
    if arch == Arch.X86_BIOS:
        return BootChoice(BootKind.TFTP, files.bios)
    if arch == Arch.EFI_IA32:
        return BootChoice(BootKind.TFTP, files.efi_ia32)
    if arch in (Arch.EFI_X86_64, Arch.EFI_BC):
        return BootChoice(BootKind.TFTP, files.efi_x86_64_snponly if files.snponly else files.efi_x86_64)
    if arch == Arch.EFI_ARM64:
        return BootChoice(BootKind.TFTP, files.efi_arm64)
    base = settings.http_boot_base_url.rstrip("/")
    if arch == Arch.HTTP_X86_64:
        return BootChoice(BootKind.HTTP, f"{base}/{files.efi_x86_64}")
    if arch == Arch.HTTP_ARM64:
        return BootChoice(BootKind.HTTP, f"{base}/{files.efi_arm64}")
    return Ignore(IgnoreReason.UNKNOWN_ARCH, f"arch {arch}" if arch is not None else "no option 93")


def build_proxy_reply(
    request: DhcpPacket, info: ClientInfo, choice: BootChoice, settings: ProxySettings,
    message_type: MessageType, *, with_boot_file: bool = True,
) -> DhcpPacket:
    """The ProxyDHCPOFFER (on 67) or ProxyDHCPACK (on 4011). RFC 2131 §4.3.1 table 3 says which
    fields are copied from the request: xid, flags, giaddr, chaddr (and ciaddr in an ACK).
    ``with_boot_file=False`` leaves siaddr, file and option 67 out (the client then asks on 4011)."""
    next_server = (settings.next_server or settings.server_ip) if with_boot_file else dhcp.ZERO_IP
    file_bytes = choice.file.encode() if with_boot_file else b""
    options: dict[int, bytes] = {
        Option.MESSAGE_TYPE: bytes((message_type,)),
        Option.SERVER_ID: settings.server_ip.packed,
        Option.VENDOR_CLASS: HTTP_CLIENT if info.http_boot else PXE_CLIENT,
    }
    guid = request.options.get(Option.CLIENT_GUID)
    if guid is not None:  # PXE spec 2.1 §2.2.1: echo the client's GUID
        options[Option.CLIENT_GUID] = guid
    if not info.http_boot:
        vendor = dhcp.PxeVendorOptions(discovery_control=DISCOVERY_CONTROL_USE_BOOTFILE)
        if message_type == MessageType.ACK:
            # PXE spec 2.1 §2.2.5: a boot server ACK carries the PXE_BOOT_ITEM the client asked for
            asked = _safe(request.pxe_options, None)
            if asked is not None and asked.boot_item is not None:
                vendor.boot_item = asked.boot_item
        options[Option.VENDOR_SPECIFIC] = dhcp.encode_pxe_options(vendor)
    if info.is_ipxe or Option.IPXE_ENCAP in request.options:
        options[Option.IPXE_ENCAP] = dhcp.encode_suboptions(
            {dhcp.IpxeSubOption.PRIORITY: settings.ipxe_priority.to_bytes(1, "big", signed=True)})
    fits = len(file_bytes) <= MAX_FILE_FIELD
    if with_boot_file and (not fits or Option.BOOTFILE_NAME in request.parameter_request_list()):
        options[Option.BOOTFILE_NAME] = file_bytes  # RFC 2132 §9.5; long URLs only fit here
    return DhcpPacket(
        op=dhcp.Op.BOOTREPLY, xid=request.xid, chaddr=request.chaddr, htype=request.htype,
        hlen=request.hlen, flags=request.flags, giaddr=request.giaddr,
        ciaddr=request.ciaddr if message_type == MessageType.ACK else dhcp.ZERO_IP,
        siaddr=next_server, file=file_bytes if fits else b"", options=options,
    )


def reply_destination(
    request: DhcpPacket, *, local_port: int, source: tuple[IPv4Address, int] | None = None,
) -> Destination:
    """RFC 2131 §4.1 (https://www.rfc-editor.org/rfc/rfc2131#section-4.1), for yiaddr = 0:
    a port-4011 request is answered to the address and port it came from (EDK2 sends from 4011,
    iPXE from 68: research note §8); else giaddr (relay, port 67), else ciaddr, else broadcast
    (a proxy has no yiaddr to unicast to, so the broadcast flag makes no difference here)."""
    mac = request.chaddr[:6] if request.hlen == 6 else None
    if local_port == PROXYDHCP_PORT and source is not None:
        ip, port = source
        if int(ip) != 0:
            return Destination(IPv4Address(ip), port, mac, False)
        return Destination(BROADCAST_IP, port, BROADCAST_MAC, True)
    if int(request.giaddr) != 0:
        return Destination(request.giaddr, SERVER_PORT, None, False)
    if int(request.ciaddr) != 0:
        return Destination(request.ciaddr, CLIENT_PORT, mac, False)
    return Destination(BROADCAST_IP, CLIENT_PORT, BROADCAST_MAC, True)


def handle_request(
    packet: DhcpPacket, settings: ProxySettings, *, local_port: int = SERVER_PORT,
    source: tuple[IPv4Address, int] | None = None,
) -> Reply | Ignore:
    """Decide and build the answer to one decoded request received on ``local_port``.

    67:   DISCOVER -> ProxyDHCPOFFER (everything else on 67 belongs to the site DHCP server).
    4011: REQUEST or INFORM -> ProxyDHCPACK, unless it names another server id.
    The caller asks the Metal API whether this MAC should boot at all *before* calling this.
    """
    if packet.op != dhcp.Op.BOOTREQUEST:
        return Ignore(IgnoreReason.NOT_REQUEST)
    if packet.htype != dhcp.HType.ETHERNET:
        return Ignore(IgnoreReason.BAD_HTYPE, str(packet.htype))
    if packet.hlen != 6:
        return Ignore(IgnoreReason.BAD_HLEN, str(packet.hlen))
    if not is_pxe_client(packet):
        return Ignore(IgnoreReason.NOT_PXE)
    info = client_info(packet)
    mt = info.message_type
    if local_port == PROXYDHCP_PORT:
        if mt not in (MessageType.REQUEST, MessageType.INFORM):
            return Ignore(IgnoreReason.WRONG_MESSAGE_TYPE, f"type {mt} on {local_port}")
        sid = packet.options.get(Option.SERVER_ID)
        if sid is not None and sid != settings.server_ip.packed:
            return Ignore(IgnoreReason.OTHER_SERVER, sid.hex())
        reply_type = MessageType.ACK
    else:
        if mt != MessageType.DISCOVER:
            return Ignore(IgnoreReason.WRONG_MESSAGE_TYPE, f"type {mt} on {local_port}")
        reply_type = MessageType.OFFER
    choice = choose_boot_file(info, settings)
    if isinstance(choice, Ignore):
        return choice
    reply = build_proxy_reply(packet, info, choice, settings, reply_type,
                              with_boot_file=reply_type == MessageType.ACK or settings.boot_file_in_offer)
    return Reply(reply, dhcp.encode(reply), reply_destination(packet, local_port=local_port, source=source),
                 info, choice)
