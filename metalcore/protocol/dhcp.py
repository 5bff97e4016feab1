"""BOOTP/DHCP message codec: ``pull_dhcp_packet``/``push_dhcp_packet`` over a :class:`Buffer`.

Rules of this file:

1. ``decode(data)`` either returns a :class:`DhcpPacket` or raises :class:`MalformedPacket`; no
   other exception may escape for any input (tests/fuzz checks this, h11 ``fuzz/afl-server.py``).
2. The decoded packet keeps the wire's facts only: options are ``{code: bytes}`` in wire order, with
   split options already concatenated (RFC 3396). Typed views (message type, arch, GUID, ...) are
   computed on access, so the hot path pays only for the options it reads.
3. ``decode(encode(p)) == p`` for every packet ``encode`` accepts.

Wire format: RFC 2131 §2 https://www.rfc-editor.org/rfc/rfc2131#section-2 and RFC 951.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import IPv4Address

from .buffer import Buffer, BufferReadError
from .errors import Malformed, MalformedPacket

__all__ = [
    "MAGIC_COOKIE", "MIN_BOOTP_SIZE", "Op", "HType", "MessageType", "Option", "PxeSubOption",
    "IpxeSubOption", "DhcpPacket", "PxeVendorOptions", "decode", "encode", "pull_dhcp_packet",
    "push_dhcp_packet", "push_dhcp_option", "decode_suboptions", "encode_suboptions",
    "decode_user_class", "encode_user_class", "decode_pxe_options", "encode_pxe_options",
]

# https://www.rfc-editor.org/rfc/rfc2131#section-3 : the first four octets of 'options'
MAGIC_COOKIE = b"\x63\x82\x53\x63"
# https://www.rfc-editor.org/rfc/rfc951 : 64-byte vendor area -> 300-byte minimum BOOTP message.
# Old PXE ROMs drop shorter replies; dnsmasq and ISC dhcpd pad to it as well.
MIN_BOOTP_SIZE = 300
# op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr sname file cookie
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s4s")
_FIXED = 236  # header without the cookie
_ZERO4 = b"\0\0\0\0"
ZERO_IP = IPv4Address(0)
BROADCAST_FLAG = 0x8000  # https://www.rfc-editor.org/rfc/rfc2131#section-2 figure 2


class Op(IntEnum):
    BOOTREQUEST = 1
    BOOTREPLY = 2


class HType(IntEnum):
    # https://www.iana.org/assignments/arp-parameters/arp-parameters.xhtml#arp-parameters-2
    ETHERNET = 1


class MessageType(IntEnum):
    # https://www.rfc-editor.org/rfc/rfc2132#section-9.6
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class Option(IntEnum):
    """DHCP option codes used here (https://www.iana.org/assignments/bootp-dhcp-parameters)."""

    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    HOSTNAME = 12
    VENDOR_SPECIFIC = 43  # PXE sub-options when option 60 says PXEClient (PXE spec 2.1 §2.4)
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52  # RFC 2132 §9.3: sname and/or file carry more options
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_REQUEST_LIST = 55
    MAX_MESSAGE_SIZE = 57
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    TFTP_SERVER_NAME = 66
    BOOTFILE_NAME = 67
    USER_CLASS = 77  # RFC 3004
    CLIENT_ARCH = 93  # RFC 4578 §2.1
    CLIENT_NDI = 94  # RFC 4578 §2.2
    CLIENT_GUID = 97  # RFC 4578 §2.3
    IPXE_ENCAP = 175  # https://ipxe.org/howto/dhcpd (iPXE-specific encapsulated options)
    END = 255


class PxeSubOption(IntEnum):
    """Option 43 sub-options, PXE spec 2.1 §2.4 table 2-1 (Intel, 1999)."""

    DISCOVERY_CONTROL = 6
    BOOT_SERVERS = 8
    BOOT_MENU = 9
    MENU_PROMPT = 10
    BOOT_ITEM = 71


class IpxeSubOption(IntEnum):
    """Option 175 sub-options, iPXE src/include/ipxe/dhcp.h."""

    PRIORITY = 1  # int8: ranks the settings block (proxydhcp above the site DHCP if > 0)
    KEEP_SAN = 8
    SKIP_SAN_BOOT = 9
    PXEEXT = 16  # feature flags 16..41 are sent BY iPXE (HTTP=19, HTTPS=20, EFI=36, ...)
    HTTP = 19
    HTTPS = 20
    EFI = 36
    NO_PXEDHCP = 176  # uint8: 1 = do not wait for ProxyDHCP (makes iPXE ignore us)
    BUS_ID = 177
    VERSION = 235


_OVERLOAD_FILE = 1
_OVERLOAD_SNAME = 2


def _ip(raw: bytes) -> IPv4Address:
    # Most addresses in a request are 0.0.0.0: skip IPv4Address() for them (hot path).
    return ZERO_IP if raw == _ZERO4 else IPv4Address(raw)


@dataclass(slots=True)
class DhcpPacket:
    """One BOOTP/DHCP message. ``chaddr`` is always the full 16-byte field; ``sname``/``file``
    have their NUL padding stripped and are empty when option 52 lent them to options."""

    op: int
    xid: int
    chaddr: bytes = b"\0" * 16
    htype: int = HType.ETHERNET
    hlen: int = 6
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = ZERO_IP
    yiaddr: IPv4Address = ZERO_IP
    siaddr: IPv4Address = ZERO_IP
    giaddr: IPv4Address = ZERO_IP
    sname: bytes = b""
    file: bytes = b""
    options: dict[int, bytes] = field(default_factory=dict)

    # -- fixed fields ---------------------------------------------------------------------------
    @property
    def mac(self) -> str:
        """chaddr as ``aa:bb:...`` (hlen bytes; hlen <= 16 is enforced by the decoder)."""
        return self.chaddr[: self.hlen].hex(":")

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST_FLAG)

    @property
    def file_name(self) -> str:
        return _cstring(self.file)

    @property
    def server_name(self) -> str:
        return _cstring(self.sname)

    # -- typed option views (computed on access; raise MalformedPacket(BAD_OPTION)) -------------
    def message_type(self) -> int | None:
        """Option 53 (a :class:`MessageType` when known), None if absent."""
        v = self.options.get(Option.MESSAGE_TYPE)
        if v is None:
            return None
        if len(v) != 1:
            raise MalformedPacket(Malformed.BAD_OPTION, f"option 53 length {len(v)}")
        try:
            return MessageType(v[0])
        except ValueError:
            return v[0]

    def server_id(self) -> IPv4Address | None:
        return self._ipv4_option(Option.SERVER_ID)

    def requested_ip(self) -> IPv4Address | None:
        return self._ipv4_option(Option.REQUESTED_IP)

    def _ipv4_option(self, code: int) -> IPv4Address | None:
        v = self.options.get(code)
        if v is None:
            return None
        if len(v) != 4:
            raise MalformedPacket(Malformed.BAD_OPTION, f"option {code} length {len(v)}")
        return IPv4Address(v)

    def parameter_request_list(self) -> tuple[int, ...]:
        return tuple(self.options.get(Option.PARAMETER_REQUEST_LIST, b""))

    def vendor_class(self) -> bytes | None:
        """Option 60 as raw bytes: firmware may put non-UTF-8 bytes here, so never decode blindly."""
        return self.options.get(Option.VENDOR_CLASS)

    def user_classes(self) -> tuple[bytes, ...]:
        v = self.options.get(Option.USER_CLASS)
        return () if v is None else decode_user_class(v)

    def client_archs(self) -> tuple[int, ...]:
        """Option 93: one uint16 per supported architecture (RFC 4578 §2.1 allows a list)."""
        v = self.options.get(Option.CLIENT_ARCH)
        if v is None:
            return ()
        if not v or len(v) % 2:
            raise MalformedPacket(Malformed.BAD_OPTION, f"option 93 length {len(v)}")
        return struct.unpack(f"!{len(v) // 2}H", v)

    def client_ndi(self) -> tuple[int, int, int] | None:
        """Option 94: (interface type (1 = UNDI), major, minor), RFC 4578 §2.2."""
        v = self.options.get(Option.CLIENT_NDI)
        if v is None:
            return None
        if len(v) != 3:
            raise MalformedPacket(Malformed.BAD_OPTION, f"option 94 length {len(v)}")
        return v[0], v[1], v[2]

    def client_guid(self) -> uuid.UUID | None:
        """Option 97: type 0 + 16-byte GUID, RFC 4578 §2.3. The first three fields are
        little-endian (SMBIOS order), so this equals the dmidecode/QEMU ``-smbios uuid``."""
        v = self.options.get(Option.CLIENT_GUID)
        if v is None:
            return None
        if len(v) != 17 or v[0] != 0:
            raise MalformedPacket(Malformed.BAD_OPTION, f"option 97 length {len(v)}")
        return uuid.UUID(bytes_le=bytes(v[1:]))

    def ipxe_options(self) -> dict[int, bytes]:
        """Option 175 sub-options (iPXE encapsulated); {} when absent."""
        v = self.options.get(Option.IPXE_ENCAP)
        return {} if v is None else decode_suboptions(v)

    def pxe_options(self) -> PxeVendorOptions | None:
        v = self.options.get(Option.VENDOR_SPECIFIC)
        return None if v is None else decode_pxe_options(v)


def _cstring(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


# -- decoding -------------------------------------------------------------------------------------
def _walk_options(data: bytes, i: int, end: int, out: dict[int, bytes]) -> None:
    """Read TLV options from data[i:end] into out, concatenating repeats (RFC 3396 §5:
    https://www.rfc-editor.org/rfc/rfc3396#section-5). Stops at END (255); PAD (0) is skipped."""
    while i < end:
        code = data[i]
        if code == 0:
            i += 1
            continue
        if code == 255:
            return
        if i + 1 >= end:
            raise MalformedPacket(Malformed.OPTION_OVERRUN, f"option {code} has no length byte")
        j = i + 2 + data[i + 1]
        if j > end:
            raise MalformedPacket(Malformed.OPTION_OVERRUN, f"option {code} runs {j - end} bytes past its field")
        value = data[i + 2 : j]
        prev = out.get(code)
        out[code] = value if prev is None else prev + value
        i = j


def pull_dhcp_packet(buf: Buffer) -> DhcpPacket:
    """Decode one DHCP message from the cursor to the end of the buffer."""
    start = buf.tell()
    raw = buf.raw
    data = raw if isinstance(raw, bytes) and start == 0 else bytes(raw[start:])
    size = len(data)
    if size < _HEADER.size:
        raise MalformedPacket(Malformed.TRUNCATED, f"{size} bytes, need at least {_HEADER.size}")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname, file,
     cookie) = _HEADER.unpack_from(data, 0)
    if cookie != MAGIC_COOKIE:
        raise MalformedPacket(Malformed.BAD_COOKIE, cookie.hex())
    if op != 1 and op != 2:
        raise MalformedPacket(Malformed.BAD_OP, str(op))
    if hlen > 16:  # chaddr holds 16 bytes: https://www.rfc-editor.org/rfc/rfc2131#section-2
        raise MalformedPacket(Malformed.BAD_HLEN, str(hlen))
    options: dict[int, bytes] = {}
    _walk_options(data, _HEADER.size, size, options)
    overload = options.get(Option.OVERLOAD)
    if overload is not None:
        # https://www.rfc-editor.org/rfc/rfc2131#section-4.1 : options, then file, then sname
        if len(overload) != 1:
            # a second option 52 concatenated onto the first: a loop/duplicate, never legal
            raise MalformedPacket(Malformed.OVERLOAD_LOOP if len(overload) > 1 else Malformed.BAD_OVERLOAD)
        which = overload[0]
        if not 1 <= which <= 3:
            raise MalformedPacket(Malformed.BAD_OVERLOAD, str(which))
        if which & _OVERLOAD_FILE:
            _walk_options(file, 0, 128, options)
            file = b""
        if which & _OVERLOAD_SNAME:
            _walk_options(sname, 0, 64, options)
            sname = b""
        if len(options[Option.OVERLOAD]) != 1:  # 52 inside sname/file: would recurse forever
            raise MalformedPacket(Malformed.OVERLOAD_LOOP)
    buf.seek(len(raw))
    return DhcpPacket(
        op=op, xid=xid, chaddr=chaddr, htype=htype, hlen=hlen, hops=hops, secs=secs, flags=flags,
        ciaddr=_ip(ciaddr), yiaddr=_ip(yiaddr), siaddr=_ip(siaddr), giaddr=_ip(giaddr),
        sname=sname.rstrip(b"\0"), file=file.rstrip(b"\0"), options=options,
    )


def decode(data: bytes | bytearray | memoryview) -> DhcpPacket:
    """Decode a whole UDP payload. Raises :class:`MalformedPacket` and nothing else."""
    try:
        return pull_dhcp_packet(Buffer(data if isinstance(data, bytes) else bytes(data)))
    except BufferReadError as exc:  # defensive: the fast path above reads with explicit checks
        raise MalformedPacket(Malformed.TRUNCATED, str(exc)) from None


# -- encoding -------------------------------------------------------------------------------------
def _option_bytes(code: int, value: bytes) -> bytes:
    """One option; values over 255 bytes become several instances (RFC 3396 §7)."""
    if not 0 < code < 255:
        raise ValueError(f"option code {code} cannot carry a value")
    n = len(value)
    if n <= 255:
        return bytes((code, n)) + value
    return b"".join(bytes((code, len(value[i : i + 255]))) + value[i : i + 255] for i in range(0, n, 255))


def push_dhcp_option(buf: Buffer, code: int, value: bytes) -> None:
    buf.push_bytes(_option_bytes(code, value))


def push_dhcp_packet(buf: Buffer, p: DhcpPacket, *, min_size: int = MIN_BOOTP_SIZE) -> None:
    if len(p.chaddr) > 16 or len(p.sname) > 64 or len(p.file) > 128:
        raise ValueError("chaddr/sname/file longer than their fixed fields (16/64/128)")
    if p.file[-1:] == b"\0" or p.sname[-1:] == b"\0":
        raise ValueError("sname/file must not end in NUL (it would not survive decoding)")
    try:
        header = _HEADER.pack(
            p.op, p.htype, p.hlen, p.hops, p.xid, p.secs, p.flags, p.ciaddr.packed, p.yiaddr.packed,
            p.siaddr.packed, p.giaddr.packed, p.chaddr, p.sname, p.file, MAGIC_COOKIE)
    except struct.error as exc:
        raise ValueError(f"field out of range: {exc}") from None
    # one join instead of a push per option: encode is on the reply path of every PXE request
    parts = [header]
    parts.extend([_option_bytes(code, value) for code, value in p.options.items()])
    parts.append(b"\xff")
    size = sum(map(len, parts))
    if size < min_size:
        parts.append(bytes(min_size - size))
    buf.push_bytes(b"".join(parts))


def encode(p: DhcpPacket, *, min_size: int = MIN_BOOTP_SIZE) -> bytes:
    buf = Buffer()
    push_dhcp_packet(buf, p, min_size=min_size)
    return buf.data


# -- sub-options and typed option values ----------------------------------------------------------
def decode_suboptions(value: bytes) -> dict[int, bytes]:
    """Encapsulated TLVs (option 43 / 175): same PAD/END rules as the main options field."""
    out: dict[int, bytes] = {}
    _walk_options(value, 0, len(value), out)
    return out


def encode_suboptions(subs: dict[int, bytes], *, end: bool = True) -> bytes:
    """TLVs plus an END byte (dnsmasq ends both 43 and 175 with 0xff; PXE 2.1 requires it in 43)."""
    parts = []
    for code, value in subs.items():
        if len(value) > 255:
            raise ValueError(f"sub-option {code} longer than 255 bytes")
        parts.append(_option_bytes(code, value))
    if end:
        parts.append(b"\xff")
    return b"".join(parts)


def decode_user_class(value: bytes) -> tuple[bytes, ...]:
    """Option 77. RFC 3004 §4 (https://www.rfc-editor.org/rfc/rfc3004#section-4) says a list of
    length-prefixed items, but iPXE and ISC dhclient send the bare string ``iPXE`` (research note
    §2/§3). Take the RFC form when it parses exactly, else the whole value as one class."""
    items = []
    i, n = 0, len(value)
    while i < n:
        ln = value[i]
        if ln == 0 or i + 1 + ln > n:
            return (bytes(value),) if value else ()
        items.append(bytes(value[i + 1 : i + 1 + ln]))
        i += 1 + ln
    return tuple(items)


def encode_user_class(classes: tuple[bytes, ...] | list[bytes]) -> bytes:
    """RFC 3004 form (what udhcpc ``-x 0x4d:04...`` and a strict client send)."""
    return b"".join(bytes((len(c),)) + c for c in classes)


@dataclass(slots=True)
class PxeVendorOptions:
    """Option 43 for a PXEClient, PXE spec 2.1 §2.4. Unknown sub-options stay in ``other``."""

    discovery_control: int | None = None  # bit 3 (8): use the boot file in this packet, no discovery
    boot_servers: list[tuple[int, list[IPv4Address]]] | None = None  # (server type, IPs)
    boot_menu: list[tuple[int, bytes]] | None = None  # (server type, description)
    menu_prompt: tuple[int, bytes] | None = None  # (timeout seconds, prompt)
    boot_item: tuple[int, int] | None = None  # (server type, layer)
    other: dict[int, bytes] = field(default_factory=dict)


def decode_pxe_options(value: bytes) -> PxeVendorOptions:
    subs = decode_suboptions(value)
    out = PxeVendorOptions()
    try:
        for code, v in subs.items():
            b = Buffer(v)
            if code == PxeSubOption.DISCOVERY_CONTROL and len(v) == 1:
                out.discovery_control = v[0]
            elif code == PxeSubOption.BOOT_SERVERS:
                out.boot_servers = []
                while not b.eof():
                    stype, count = b.pull_uint16(), b.pull_uint8()
                    out.boot_servers.append((stype, [IPv4Address(b.pull_bytes(4)) for _ in range(count)]))
            elif code == PxeSubOption.BOOT_MENU:
                out.boot_menu = []
                while not b.eof():
                    stype = b.pull_uint16()
                    out.boot_menu.append((stype, b.pull_bytes(b.pull_uint8())))
            elif code == PxeSubOption.MENU_PROMPT and len(v) >= 1:
                out.menu_prompt = (v[0], bytes(v[1:]))
            elif code == PxeSubOption.BOOT_ITEM and len(v) == 4:
                out.boot_item = struct.unpack("!HH", v)
            else:
                out.other[code] = bytes(v)
    except BufferReadError as exc:
        raise MalformedPacket(Malformed.BAD_OPTION, f"option 43: {exc}") from None
    return out


def encode_pxe_options(o: PxeVendorOptions) -> bytes:
    subs: dict[int, bytes] = {}
    if o.discovery_control is not None:
        subs[PxeSubOption.DISCOVERY_CONTROL] = bytes((o.discovery_control,))
    if o.boot_servers is not None:
        subs[PxeSubOption.BOOT_SERVERS] = b"".join(
            struct.pack("!HB", t, len(ips)) + b"".join(ip.packed for ip in ips) for t, ips in o.boot_servers)
    if o.boot_menu is not None:
        subs[PxeSubOption.BOOT_MENU] = b"".join(
            struct.pack("!HB", t, len(d)) + d for t, d in o.boot_menu)
    if o.menu_prompt is not None:
        subs[PxeSubOption.MENU_PROMPT] = bytes((o.menu_prompt[0],)) + o.menu_prompt[1]
    if o.boot_item is not None:
        subs[PxeSubOption.BOOT_ITEM] = struct.pack("!HH", *o.boot_item)
    subs.update(o.other)
    return encode_suboptions(subs)
