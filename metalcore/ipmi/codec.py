"""IPMI bytes metalcore reads and writes, pure (no session, no socket). Spec: IPMI v2.0 rev 1.1,
§28.2 Get Chassis Status, §28.3 Chassis Control, §28.5 Chassis Identify, §28.12/28.13 Set/Get System Boot
Options, Table 28-14 boot option parameter 5 ("boot flags")."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BmcAddress", "BootFlags", "ChassisStatus", "CONTROL", "BOOT_DEVICE", "parse_address",
           "decode_boot_flags", "decode_chassis_status", "DEFAULT_PORT"]

DEFAULT_PORT = 623  # the 2020-02 metal-core defaulted to 632, a typo (research note §5)

# Chassis Control (NetFn 0x00, cmd 0x02) data byte, §28.3
CONTROL = {"off": 0x00, "on": 0x01, "cycle": 0x02, "reset": 0x03}

# Boot flags data 2, bits 5:2 "boot device selector" (Table 28-14), and pyghmi's name for each.
BOOT_DEVICE = {"pxe": 0x04, "disk": 0x08, "bios": 0x18}
PYGHMI_BOOTDEV = {"pxe": "network", "disk": "hd", "bios": "setup"}
_SELECTOR_NAME = {0x00: "none", 0x04: "pxe", 0x08: "disk", 0x0C: "disk-safe", 0x10: "diag", 0x14: "cdrom",
                  0x18: "bios", 0x1C: "floppy"}


@dataclass(frozen=True)
class BmcAddress:
    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(address: str) -> BmcAddress:
    """metal-api's ``ipmi.address``: ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; port 623 by default."""
    a = address.strip()
    if not a:
        raise ValueError("empty BMC address")
    if a.startswith("["):
        host, _, rest = a[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif a.count(":") == 1:
        host, port = a.split(":")
    else:
        host, port = a, ""  # a bare IPv6 address has several colons and no port
    if not host:
        raise ValueError(f"no host in BMC address {address!r}")
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad port in BMC address {address!r}")
        return BmcAddress(host, int(port))
    return BmcAddress(host)


@dataclass(frozen=True)
class ChassisStatus:
    power_on: bool
    identify: str | None   # "off" | "timed" | "on" when the BMC reports it (bit 6 of byte 3), else None


def decode_chassis_status(data: bytes) -> ChassisStatus:
    """Get Chassis Status response data (completion code stripped), §28.2."""
    if len(data) < 1:
        raise ValueError("empty Get Chassis Status answer")
    identify = None
    if len(data) >= 3 and data[2] & 0x40:  # "chassis identify command and state info supported"
        identify = ("off", "timed", "on", "reserved")[(data[2] >> 4) & 0x03]
    return ChassisStatus(power_on=bool(data[0] & 0x01), identify=identify)


@dataclass(frozen=True)
class BootFlags:
    """Boot option parameter 5 as read back. ``valid`` False means the BMC did not set the "boot flags
    valid" bit: then ``persistent``/``efi`` say nothing (ipmi_sim never sets them, research gotcha 1),
    but the device selector is still what the BMC stored."""

    device: str
    valid: bool
    persistent: bool
    efi: bool


def decode_boot_flags(data: bytes) -> BootFlags:
    """Get System Boot Options(param 5) response data: version, param selector, then the 5 flag bytes."""
    if len(data) < 4:
        raise ValueError(f"boot options answer too short ({len(data)} bytes)")
    if data[1] & 0x7F != 5:
        raise ValueError(f"boot options answer is for parameter {data[1] & 0x7F}, not 5")
    flags, dev = data[2], data[3] & 0x3C
    return BootFlags(device=_SELECTOR_NAME.get(dev, f"0x{dev:02x}"), valid=bool(flags & 0x80),
                     persistent=bool(flags & 0x40), efi=bool(flags & 0x20))
