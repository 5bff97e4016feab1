"""Errors of the pure protocol layer.

    ValueError
     ├── BufferReadError          (buffer.py: a read ran past the end; never leaves this package)
     └── MalformedPacket          the PEER sent bytes we cannot decode; ``reason`` is a metrics label
                                  (drop the packet, count it, go on)

Our own misuse (encoding a packet with a 300-byte ``sname``, an option code of 0) raises a plain
``ValueError``/``TypeError``: that is a bug here, not a peer's fault (h11 splits them the same way).
"Not for us" (a reply, a non-PXE client, an unknown arch) is not an error at all: pxe.py returns an
``Ignore`` outcome for it.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Malformed", "MalformedPacket"]


class Malformed(str, Enum):
    """Short, stable reasons; the value is used as a Prometheus label, so never rename one."""

    TRUNCATED = "truncated"  # shorter than the fixed header it claims
    BAD_COOKIE = "bad_cookie"  # no DHCP magic cookie 99.130.83.99 (plain BOOTP or garbage)
    OPTION_OVERRUN = "option_overrun"  # an option's length runs past the end of its field
    OVERLOAD_LOOP = "overload_loop"  # option 52 repeated or appearing inside sname/file
    BAD_OVERLOAD = "bad_overload"  # option 52 with a length other than 1 or a value outside 1..3
    BAD_HLEN = "bad_hlen"  # hlen > 16 (chaddr is 16 bytes), or not 6 for Ethernet
    BAD_HTYPE = "bad_htype"  # not Ethernet (htype 1): we cannot answer on the link
    BAD_OP = "bad_op"  # op neither BOOTREQUEST nor BOOTREPLY
    BAD_OPTION = "bad_option"  # a typed option (53, 93, 97, ...) has an impossible length/value
    NOT_REQUEST = "not_request"  # op=2 where a request was required
    # frames.py
    NOT_IPV4 = "not_ipv4"
    NOT_UDP = "not_udp"
    BAD_IP_HEADER = "bad_ip_header"  # version != 4, IHL < 5, total length inconsistent
    BAD_IP_CHECKSUM = "bad_ip_checksum"
    IP_FRAGMENT = "ip_fragment"  # DHCP never needs fragments; a fragment is not reassembled here
    BAD_UDP_LENGTH = "bad_udp_length"
    BAD_UDP_CHECKSUM = "bad_udp_checksum"

    def __str__(self) -> str:
        return self.value


class MalformedPacket(ValueError):
    """The peer's bytes cannot be decoded. ``reason`` is one of :class:`Malformed`."""

    def __init__(self, reason: Malformed, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
