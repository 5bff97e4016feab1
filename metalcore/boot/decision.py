"""Pure parts of the boot decision: classify what the Metal API found, build the answer, cache it.

No I/O and no clock of its own: ``now`` is passed in (STYLE.md lesson 3). The rules are metal-core's
``internal/endpoint/boot.go@d4a35e7`` (research note metal-contracts.md §1.3):

* 0 machines own the MAC, or 1 machine without allocation, or 1 whose ``allocation.succeeded`` is
  false -> boot metal-hammer (discovery; a failed or unfinished install is installed again);
* 1 machine with a succeeded allocation -> no network boot: it boots its installed OS from disk;
* more than 1 machine -> no network boot, and say so loudly: the Metal API's data is inconsistent and
  booting either identity could wipe the wrong disk.
"""

from __future__ import annotations

import enum
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from metalcore.protocol.ipxe import build_cmdline

__all__ = ["BootConfig", "BootResponse", "Decision", "DecisionCache", "Verdict", "build_response",
           "classify", "normalize_mac"]

_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
# Bound of the per-MAC cache: a rack has < 100 machines with a few NICs each; 10 000 leaves room for
# a DHCP storm of spoofed MACs without letting it grow the process without limit.
MAX_CACHED_MACS = 10_000


def normalize_mac(value: str) -> str:
    """``aa:bb:cc:dd:ee:ff`` (lower case) from colon, dash or bare notation; ValueError otherwise."""
    s = value.strip().lower()
    if not _MAC_RE.match(s):
        raise ValueError(f"not a MAC address: {value[:64]!r}")
    hexdigits = s.replace(":", "").replace("-", "")
    return ":".join(hexdigits[i:i + 2] for i in range(0, 12, 2))


class Verdict(str, enum.Enum):
    DISCOVERY = "discovery"        # PXE boot metal-hammer
    DISK = "disk"                  # allocated and installed: no network boot
    AMBIGUOUS = "ambiguous"        # > 1 machine owns the MAC: no network boot
    UNAVAILABLE = "unavailable"    # the Metal API could not be asked and we fail closed
    NO_BOOTCONFIG = "no-bootconfig"  # discovery wanted, but no partition boot config known yet


@dataclass(frozen=True)
class BootConfig:
    """A partition's boot config (metal-api v1.PartitionBootConfiguration)."""
    kernel_url: str
    image_url: str
    commandline: str = ""

    @classmethod
    def from_api(cls, bootconfig: Mapping[str, Any] | None) -> "BootConfig | None":
        """From ``partition["bootconfig"]`` (or the switch registration's copy); None if unusable."""
        if not isinstance(bootconfig, Mapping):
            return None
        kernel, image = bootconfig.get("kernelurl"), bootconfig.get("imageurl")
        if not isinstance(kernel, str) or not kernel or not isinstance(image, str) or not image:
            return None
        cmdline = bootconfig.get("commandline")
        return cls(kernel, image, cmdline if isinstance(cmdline, str) else "")


@dataclass(frozen=True)
class BootResponse:
    """metal-core's domain.BootResponse, what pixiecore's API mode read (§1.2)."""
    kernel: str
    initrd: tuple[str, ...]
    cmdline: str

    def to_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "initrd": list(self.initrd), "cmdline": self.cmdline}


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    response: BootResponse | None = None
    machine_id: str | None = None
    machine_ids: tuple[str, ...] = ()
    cached: bool = field(default=False, compare=False)


def _machine_id(m: Any) -> str | None:
    return m.get("id") if isinstance(m, Mapping) and isinstance(m.get("id"), str) else None


def classify(machines: Sequence[Any]) -> tuple[Verdict, str, str | None]:
    """(verdict, reason, machine id) for the result of ``POST /v1/machine/find`` by one MAC."""
    if not machines:
        return Verdict.DISCOVERY, "unknown machine", None
    if len(machines) > 1:
        ids = ", ".join(str(_machine_id(m)) for m in machines)
        return Verdict.AMBIGUOUS, f"{len(machines)} machines own this MAC ({ids})", None
    m = machines[0]
    mid = _machine_id(m)
    allocation = m.get("allocation") if isinstance(m, Mapping) else None
    if not isinstance(allocation, Mapping):
        return Verdict.DISCOVERY, "machine is not allocated", mid
    if allocation.get("succeeded") is not True:
        return Verdict.DISCOVERY, "allocation has not succeeded (install pending or failed)", mid
    return Verdict.DISK, "allocated and installed: boot from disk", mid


def build_response(config: BootConfig, *, metal_core_ip: str, metal_core_port: int, metal_api_url: str,
                   debug: bool = False) -> BootResponse:
    """The discovery answer: the partition's kernel and image, and metal-hammer's command line."""
    cmdline = build_cmdline(config.commandline, metal_core_ip=metal_core_ip, metal_core_port=metal_core_port,
                            metal_api_url=metal_api_url, debug=debug)
    # an empty partition commandline would leave a leading blank (the Go code had it too)
    return BootResponse(config.kernel_url, (config.image_url,), cmdline.strip())


class DecisionCache:
    """Per-MAC decisions reused for ``ttl`` seconds, so a DHCP retry storm costs one Metal API call.

    Not thread-safe by itself (pure); the caller holds a lock. ``ttl`` 0 disables it.
    """

    def __init__(self, ttl: float, max_entries: int = MAX_CACHED_MACS) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, Decision]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, mac: str, now: float) -> Decision | None:
        entry = self._entries.get(mac)
        if entry is None:
            return None
        stored_at, decision = entry
        if now - stored_at >= self.ttl or now < stored_at:  # expired, or the clock went backwards
            del self._entries[mac]
            return None
        return decision

    def put(self, mac: str, decision: Decision, now: float) -> None:
        if self.ttl <= 0:
            return
        self._entries.pop(mac, None)
        self._entries[mac] = (now, decision)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)  # the oldest stored

    def invalidate(self, mac: str | None = None) -> None:
        """Forget one MAC (e.g. after its machine was freed) or everything."""
        if mac is None:
            self._entries.clear()
        else:
            self._entries.pop(mac, None)
