"""The rack lab's PXE network: two network namespaces joined by a veth, a bridge, a tap per NIC.

::

  netns <ns>-rack                          netns <ns>-mach
  ┌─────────────────────────┐  veth   ┌───────────────────────────────────────────┐
  │ rk<tag> 10.250.0.1/24   │◄───────►│ pk<tag> ─┐                                │
  │         fd00:250::1/64  │         │          br<tag> (stp off, fwd_delay 0)   │
  │ site dnsmasq, metal-core│         │ t<tag>m0n0┘ t<tag>m0n1┘ ... (QEMU taps)   │
  └───────────┬─────────────┘         └───────────────────────────────────────────┘
              │ optional uplink veth (u<tag>r / u<tag>h): host <-> rack, a /30 from 100.127.0.0/16
           host netns (ipmi_sim, Metal API, nsqd on 127.0.0.1 or the uplink address)

Why: everything PXE happens inside namespaces, so the host's interfaces, routes and sysctls are
never touched (pxe-on-this-machine.md), and the 10.250.0.0/24 addresses can be the same in
every lab.  Names carry a random 6-hex ``tag`` so parallel labs and tests coexist (gotcha 20),
and ``down()`` deletes exactly the namespaces (and the uplink) this object made: deleting a
namespace removes its veths, taps and bridge.

The bridge gets a fixed locally administered MAC, else it takes the lowest port MAC and changes
as taps come and go (gotcha 14).  IPv6: an fd00:: address on the rack side exists only so dnsmasq
can send the router advertisement iPXE otherwise waits 16 s for (gotcha 2).
"""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from metalcore.lab.procs import LabError, require_binary

NS_PREFIX = "mclab-"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise LabError(f"ip {' '.join(args)} failed: {r.stderr.strip()}")
    return r


def existing_namespaces() -> set[str]:
    out = _ip("netns", "list").stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@dataclass
class RackNet:
    """One lab's PXE network.  ``up()`` builds it, ``down()`` removes what ``up()`` made."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    subnet: str = "10.250.0.0/24"
    subnet6: str = "fd00:250::/64"
    uplink: bool = False           # veth host<->rack so rack-side processes reach host peers
    state_file: Path | None = None  # where up() records what it made (for a later down())
    taps: list[str] = field(default_factory=list)
    is_up: bool = False
    uplink_host_ip: str | None = None
    uplink_rack_ip: str | None = None

    # --- names ------------------------------------------------------------------------------
    @property
    def rack_ns(self) -> str:
        return f"{NS_PREFIX}{self.tag}-rack"

    @property
    def machine_ns(self) -> str:
        return f"{NS_PREFIX}{self.tag}-mach"

    @property
    def rack_if(self) -> str:
        return f"rk{self.tag}"

    @property
    def peer_if(self) -> str:
        return f"pk{self.tag}"

    @property
    def bridge(self) -> str:
        return f"br{self.tag}"

    @property
    def uplink_host_if(self) -> str:
        return f"u{self.tag}h"

    @property
    def uplink_rack_if(self) -> str:
        return f"u{self.tag}r"

    def tap_name(self, machine: int, nic: int = 0) -> str:
        return f"t{self.tag}m{machine}n{nic}"

    # --- addresses --------------------------------------------------------------------------
    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(self.subnet)

    @property
    def rack_ip(self) -> str:
        """The rack side's address: site DHCP server, metal-core, reference HTTP server."""
        return str(self.network[1])

    @property
    def rack_ip6(self) -> str:
        return str(ipaddress.ip_network(self.subnet6)[1])

    @property
    def dhcp_range(self) -> tuple[str, str]:
        n = self.network
        return str(n[100]), str(n[min(199, n.num_addresses - 2)])

    def exec_prefix(self, ns: str | None = None) -> list[str]:
        """argv prefix that runs a command in ``ns`` (default: the rack namespace).

        ``ip netns exec`` execs the command, so the pid of the started process is the command's
        own (gotcha 15) and can be recorded and killed as usual.
        """
        return ["ip", "netns", "exec", ns or self.rack_ns]

    # --- life cycle ---------------------------------------------------------------------------
    def up(self) -> "RackNet":
        if os.geteuid() != 0:
            raise LabError("the rack lab's network needs root (network namespaces, taps)")
        require_binary("ip", "apt-get install iproute2")
        if {self.rack_ns, self.machine_ns} & existing_namespaces():
            raise LabError(f"namespaces for tag {self.tag} exist already; pick another tag or down() it")
        self.is_up = True
        self._record()
        try:
            self._build()
        except Exception:
            self.down()
            raise
        self._record()
        return self

    def _build(self) -> None:
        r, m = self.rack_ns, self.machine_ns
        _ip("netns", "add", r)
        _ip("netns", "add", m)
        _ip("link", "add", self.rack_if, "netns", r, "type", "veth", "peer", "name", self.peer_if, "netns", m)
        for ns in (r, m):
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", r, "addr", "add", f"{self.rack_ip}/{self.network.prefixlen}", "dev", self.rack_if)
        _ip("-n", r, "addr", "add", f"{self.rack_ip6}/64", "dev", self.rack_if, "nodad")
        _ip("-n", r, "link", "set", self.rack_if, "up")
        # Locally administered bridge MAC derived from the tag, so it never follows the taps.
        mac = "02:00:" + ":".join(self.tag[i:i + 2] for i in (0, 2, 4)) + ":0b"
        _ip("-n", m, "link", "add", "name", self.bridge, "address", mac, "type", "bridge",
            "stp_state", "0", "forward_delay", "0")
        _ip("-n", m, "link", "set", self.peer_if, "master", self.bridge)
        _ip("-n", m, "link", "set", self.peer_if, "up")
        _ip("-n", m, "link", "set", self.bridge, "up")
        if self.uplink:
            self._build_uplink()

    def _build_uplink(self) -> None:
        used = _ip("-4", "-o", "addr", "show").stdout
        base = int(self.tag, 16) % 16384
        for k in range(16384):
            cand = list(_nth_subnet(ipaddress.ip_network("100.127.0.0/16"), (base + k) % 16384))
            host_ip, rack_ip = str(cand[1]), str(cand[2])
            if f" {host_ip}/" not in used and f" {rack_ip}/" not in used:
                break
        else:
            raise LabError("no free /30 in 100.127.0.0/16 for the uplink")
        _ip("link", "add", self.uplink_host_if, "type", "veth", "peer", "name", self.uplink_rack_if,
            "netns", self.rack_ns)
        self.uplink_host_ip, self.uplink_rack_ip = host_ip, rack_ip
        self._record()
        _ip("addr", "add", f"{host_ip}/30", "dev", self.uplink_host_if)
        _ip("link", "set", self.uplink_host_if, "up")
        _ip("-n", self.rack_ns, "addr", "add", f"{rack_ip}/30", "dev", self.uplink_rack_if)
        _ip("-n", self.rack_ns, "link", "set", self.uplink_rack_if, "up")

    def add_tap(self, machine: int, nic: int = 0) -> str:
        """Create a tap in the bridge for NIC ``nic`` of machine ``machine``; returns its name.

        Pre-created taps need no qemu-ifup script; a tap shows NO-CARRIER until QEMU opens it.
        """
        name = self.tap_name(machine, nic)
        m = self.machine_ns
        _ip("-n", m, "tuntap", "add", "dev", name, "mode", "tap")
        _ip("-n", m, "link", "set", name, "master", self.bridge)
        _ip("-n", m, "link", "set", name, "up")
        self.taps.append(name)
        return name

    def down(self) -> None:
        """Delete the namespaces (and with them every veth, tap, bridge) and the uplink."""
        for ns in (self.machine_ns, self.rack_ns):
            if ns in existing_namespaces():
                _ip("netns", "del", ns, check=False)
        if self.uplink_host_ip is not None:
            _ip("link", "del", self.uplink_host_if, check=False)  # usually gone with the netns
        self.taps.clear()
        self.is_up = False
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)

    # --- bookkeeping ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"tag": self.tag, "subnet": self.subnet, "subnet6": self.subnet6, "uplink": self.uplink,
                "uplink_host_ip": self.uplink_host_ip, "uplink_rack_ip": self.uplink_rack_ip,
                "rack_ns": self.rack_ns, "machine_ns": self.machine_ns, "taps": list(self.taps)}

    @classmethod
    def from_dict(cls, d: dict, state_file: Path | None = None) -> "RackNet":
        return cls(tag=d["tag"], subnet=d["subnet"], subnet6=d["subnet6"], uplink=d["uplink"],
                   state_file=state_file, taps=list(d.get("taps", [])), is_up=True,
                   uplink_host_ip=d.get("uplink_host_ip"), uplink_rack_ip=d.get("uplink_rack_ip"))

    def _record(self) -> None:
        if self.state_file is not None:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            self.state_file.write_text(json.dumps(self.to_dict(), indent=1))


def _nth_subnet(net: ipaddress.IPv4Network, n: int) -> ipaddress.IPv4Network:
    return ipaddress.ip_network((int(net.network_address) + 4 * n, 30))

