"""Pure switch logic: the Metal API's desired port states, the diff against the running config, and the
NETCONF edit for our leaf YANG model (metalcore/lab/yang/metalcore-leaf.yang, docs/leaf-yang.md).

No sockets, no clocks, no logging: everything here is a function of its arguments, tested as values and
exact strings. The rules are metal-core's ``buildSwitcherConfig`` (research note metal-contracts.md §4.3):

* a port in ``spine_uplinks`` or ``additional_bridge_ports`` is never touched;
* ``vrf == ""``        -> unprovisioned: access port in the PXE VLAN (4000, VNI 104000), MTU 9000;
* ``vrf == "default"`` -> firewall: routed port in VRF default, MTU 9216 (as metal-core's underlay);
* ``vrf == "vrf<N>"``  -> tenant: port in VRF vrf<N> with L3 VNI N, MTU 9000, and a bridge VLAN from
  1001-2000 mapped to VNI N; an existing VLAN<->VNI mapping is reused, else the lowest free id is taken
  (metal-core ``internal/vlan``), so a tenant's VLAN stays stable while its VRF is in use.

Ports that the switch has but the Metal API does not list are left alone, and so are the VLANs/VRFs such
ports still use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from lxml import etree

NS = "urn:metalcore:lab:leaf"
NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
TENANT_VLAN_RANGE = (1001, 2000)
MACHINE_MTU = 9000
ROUTED_MTU = 9216
_VRF_RE = re.compile(r"vrf([0-9]+)")

ACCESS, ROUTED, TENANT = "access", "routed", "tenant"


# --- errors: a desired state that cannot be applied ---------------------------------------------------

class DesiredStateError(ValueError):
    """The Metal API asks for something this switch cannot do; nothing is applied."""


class UnknownPort(DesiredStateError):
    pass


class VlanRangeExhausted(DesiredStateError):
    pass


class BadVrf(DesiredStateError):
    pass


# --- values ------------------------------------------------------------------------------------------

def pxe_vni(pxe_vlan: int) -> int:
    """VNI of the PXE VLAN: ``10%04d`` (4000 -> 104000), as metal-core renders it (§4.5)."""
    return int(f"10{pxe_vlan:04d}")


@dataclass(frozen=True)
class PortState:
    """The managed leaves of one port (MAC and admin state are not ours to change)."""

    mode: str
    access_vlan: int | None = None
    vrf: str | None = None
    vni: int | None = None
    mtu: int | None = None

    def label(self, pxe_vlan: int) -> str:
        """What the port is, in the Metal API's words: "pxe", "default" (firewall), "vrf<N>"."""
        if self.mode == ACCESS:
            return "pxe" if self.access_vlan == pxe_vlan else f"vlan{self.access_vlan}"
        return self.vrf or self.mode


@dataclass(frozen=True)
class SwitchConfig:
    """A switch's running config as far as metalcore cares."""

    ports: Mapping[str, PortState]
    macs: Mapping[str, str] = field(default_factory=dict)
    vlans: Mapping[int, int | None] = field(default_factory=dict)   # id -> vni
    vrfs: Mapping[str, int | None] = field(default_factory=dict)    # name -> vni
    hostname: str | None = None


@dataclass(frozen=True)
class DesiredState:
    ports: Mapping[str, PortState]
    vlans: Mapping[int, int | None]        # must exist with this vni
    vrfs: Mapping[str, int | None]         # must exist with this vni (default: any)
    keep_vlans: frozenset[int] = frozenset()   # never removed (PXE, additional VIDs, used by others)
    keep_vrfs: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PortChange:
    name: str
    before: PortState | None
    after: PortState


@dataclass(frozen=True)
class ChangeSet:
    ports: tuple[PortChange, ...] = ()
    vlans_set: tuple[tuple[int, int | None], ...] = ()
    vlans_delete: tuple[int, ...] = ()
    vrfs_set: tuple[tuple[str, int | None], ...] = ()
    vrfs_delete: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.ports or self.vlans_set or self.vlans_delete or self.vrfs_set or self.vrfs_delete)

    def summary(self, pxe_vlan: int) -> dict:
        """JSON-able description for logs, bus events and dry runs."""
        return {
            "ports": [{"port": c.name, "from": c.before.label(pxe_vlan) if c.before else None,
                       "to": c.after.label(pxe_vlan)} for c in self.ports],
            "vlans_set": [{"id": i, "vni": v} for i, v in self.vlans_set],
            "vlans_delete": list(self.vlans_delete),
            "vrfs_set": [{"name": n, "vni": v} for n, v in self.vrfs_set],
            "vrfs_delete": list(self.vrfs_delete),
        }


# --- desired state -------------------------------------------------------------------------------------

def tenant_vni(vrf: str) -> int:
    m = _VRF_RE.fullmatch(vrf)
    if not m:
        raise BadVrf(f"vrf {vrf!r} is neither \"\", \"default\" nor vrf<N>")
    return int(m.group(1))


def allocate_vlans(vnis: Iterable[int], running_vlans: Mapping[int, int | None], reserved: Iterable[int] = (),
                   vlan_range: tuple[int, int] = TENANT_VLAN_RANGE) -> dict[int, int]:
    """VNI -> VLAN id for every tenant VNI: the running mapping where there is one, else the lowest free id.

    Ids that no running VLAN uses are taken first; then ids of running tenant VLANs whose VNI is no longer
    wanted (they are remapped in the same edit). Raises VlanRangeExhausted when the range is full.
    """
    lo, hi = vlan_range
    wanted = sorted(set(vnis))
    wanted_set = set(wanted)
    reserved = set(reserved)
    out: dict[int, int] = {}
    for vid, vni in sorted(running_vlans.items()):
        if lo <= vid <= hi and vni in wanted_set and vni not in out and vid not in reserved:
            out[vni] = vid
    missing = [v for v in wanted if v not in out]
    if not missing:
        return out
    used = set(out.values()) | reserved
    fresh = [i for i in range(lo, hi + 1) if i not in running_vlans and i not in used]
    stale = [i for i in range(lo, hi + 1) if i in running_vlans and i not in used
             and running_vlans[i] is not None and running_vlans[i] not in wanted_set]
    free = fresh + stale
    if len(free) < len(missing):
        raise VlanRangeExhausted(
            f"VLAN range {lo}-{hi} exhausted: {len(missing)} tenant VNI(s) "
            f"{', '.join(map(str, missing[:5]))}{'...' if len(missing) > 5 else ''} need a VLAN, "
            f"{len(free)} free")
    for vni, vid in zip(missing, free):
        out[vni] = vid
    return out


def desired_state(nics: Iterable[Mapping], running: SwitchConfig, *, pxe_vlan: int = 4000,
                  spine_uplinks: Iterable[str] = ("swp31", "swp32"), additional_bridge_ports: Iterable[str] = (),
                  additional_bridge_vids: Iterable[int | str] = (),
                  vlan_range: tuple[int, int] = TENANT_VLAN_RANGE) -> DesiredState:
    """The Metal API's ``nics`` (``[{name, mac, vrf}]`` of GET /v1/switch/{id}) as port states."""
    skip = set(spine_uplinks) | set(additional_bridge_ports)
    extra_vids = {int(v) for v in additional_bridge_vids}
    ports: dict[str, PortState] = {}
    tenant_vnis: dict[str, int] = {}
    firewall = False
    unknown = []
    for nic in nics:
        name = nic.get("name") or ""
        if name in skip:
            continue
        if name not in running.ports:
            unknown.append(name)
            continue
        vrf = nic.get("vrf") or ""
        if vrf == "":
            ports[name] = PortState(ACCESS, access_vlan=pxe_vlan, mtu=MACHINE_MTU)
        elif vrf == "default":
            firewall = True
            ports[name] = PortState(ROUTED, vrf="default", mtu=ROUTED_MTU)
        else:
            vni = tenant_vni(vrf)
            tenant_vnis[vrf] = vni
            ports[name] = PortState(TENANT, vrf=vrf, vni=vni, mtu=MACHINE_MTU)
    if unknown:
        raise UnknownPort(f"the Metal API lists port(s) {', '.join(sorted(unknown))} that the switch "
                          f"{running.hostname or ''} does not have".replace("  ", " "))
    # what ports we do not manage still use must stay
    others = [p for n, p in running.ports.items() if n not in ports]
    keep_vrfs = frozenset(p.vrf for p in others if p.vrf) | {"default", "mgmt"}
    keep_vlans = frozenset(p.access_vlan for p in others if p.access_vlan is not None) | extra_vids | {pxe_vlan}
    vlan_of = allocate_vlans(tenant_vnis.values(), running.vlans, reserved=keep_vlans | extra_vids,
                             vlan_range=vlan_range)
    vlans: dict[int, int | None] = {pxe_vlan: pxe_vni(pxe_vlan)}
    for vni in sorted(set(tenant_vnis.values())):
        vlans[vlan_of[vni]] = vni
    vrfs: dict[str, int | None] = {vrf: vni for vrf, vni in sorted(tenant_vnis.items(), key=lambda kv: kv[1])}
    if firewall:
        vrfs = {"default": None, **vrfs}
    return DesiredState(ports=ports, vlans=vlans, vrfs=vrfs, keep_vlans=keep_vlans, keep_vrfs=keep_vrfs)


# --- diff and verification -----------------------------------------------------------------------------

def _port_sort_key(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def diff(desired: DesiredState, running: SwitchConfig, vlan_range: tuple[int, int] = TENANT_VLAN_RANGE) -> ChangeSet:
    """What must change so that ``running`` becomes ``desired``; an empty ChangeSet means no commit."""
    ports = tuple(PortChange(n, running.ports.get(n), want) for n, want in
                  sorted(desired.ports.items(), key=lambda kv: _port_sort_key(kv[0]))
                  if running.ports.get(n) != want)
    vlans_set = tuple((i, v) for i, v in sorted(desired.vlans.items())
                      if i not in running.vlans or running.vlans[i] != v)
    lo, hi = vlan_range
    # only tenant VLANs that we mapped to a VNI are ours to remove
    vlans_delete = tuple(i for i, v in sorted(running.vlans.items())
                         if lo <= i <= hi and v is not None and i not in desired.vlans and i not in desired.keep_vlans)
    vrfs_set = tuple((n, v) for n, v in desired.vrfs.items()
                     if n not in running.vrfs or (v is not None and running.vrfs[n] != v))
    vrfs_delete = tuple(sorted((n for n in running.vrfs if _VRF_RE.fullmatch(n) and n not in desired.vrfs
                                and n not in desired.keep_vrfs), key=_port_sort_key))
    return ChangeSet(ports, vlans_set, vlans_delete, vrfs_set, vrfs_delete)


def unmet(changes: ChangeSet, running: SwitchConfig) -> list[str]:
    """What of ``changes`` the read-back ``running`` does not show (empty = verified)."""
    out = []
    for c in changes.ports:
        got = running.ports.get(c.name)
        if got != c.after:
            out.append(f"port {c.name}: want {c.after}, running {got}")
    for i, v in changes.vlans_set:
        if running.vlans.get(i, "absent") != v:
            out.append(f"vlan {i}: want vni {v}, running {running.vlans.get(i, 'absent')}")
    out += [f"vlan {i} still present" for i in changes.vlans_delete if i in running.vlans]
    for n, v in changes.vrfs_set:
        if n not in running.vrfs or (v is not None and running.vrfs[n] != v):
            out.append(f"vrf {n}: want vni {v}, running {running.vrfs.get(n, 'absent')}")
    out += [f"vrf {n} still present" for n in changes.vrfs_delete if n in running.vrfs]
    return out


# --- XML: parse the running config, render the edit ----------------------------------------------------

def _q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


def _text(el, tag: str) -> str | None:
    c = el.find(_q(tag))
    return c.text.strip() if c is not None and c.text is not None else None


def _int(s: str | None) -> int | None:
    return int(s) if s is not None and s.isdigit() else None


def parse_running(xml: str | bytes) -> SwitchConfig:
    """A ``<data>``/``<config>``/``<switch>`` document of metalcore-leaf as a SwitchConfig.

    Leaves with a YANG default (mode access, MTU 9000) are filled in when absent, so that a port written
    without them compares equal to one written with them.
    """
    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml,
                            parser=etree.XMLParser(resolve_entities=False, no_network=True))
    sw = root if root.tag == _q("switch") else root.find(f".//{_q('switch')}")
    ports: dict[str, PortState] = {}
    macs: dict[str, str] = {}
    vlans: dict[int, int | None] = {}
    vrfs: dict[str, int | None] = {}
    hostname = None
    if sw is not None:
        hostname = _text(sw, "hostname")
        for p in sw.findall(_q("port")):
            name = _text(p, "name")
            if not name:
                continue
            ports[name] = PortState(mode=_text(p, "mode") or ACCESS, access_vlan=_int(_text(p, "access-vlan")),
                                    vrf=_text(p, "vrf"), vni=_int(_text(p, "vni")),
                                    mtu=_int(_text(p, "mtu")) or MACHINE_MTU)
            mac = _text(p, "mac")
            if mac:
                macs[name] = mac
        for v in sw.findall(_q("vlan")):
            vid = _int(_text(v, "id"))
            if vid is not None:
                vlans[vid] = _int(_text(v, "vni"))
        for v in sw.findall(_q("vrf")):
            name = _text(v, "name")
            if name:
                vrfs[name] = _int(_text(v, "vni"))
    return SwitchConfig(ports=ports, macs=macs, vlans=vlans, vrfs=vrfs, hostname=hostname)


def _esc(v: object) -> str:
    return (str(v).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def _remove(leaf: str) -> str:
    return f'<{leaf} nc:operation="remove"/>'


def render_port(name: str, p: PortState) -> str:
    """One port as a merge that also removes the leaves the new mode must not have ("remove" is a no-op
    on an absent leaf, RFC 6241), so the model's must-statements hold after the edit."""
    parts = [f"<name>{_esc(name)}</name>", f"<mode>{_esc(p.mode)}</mode>"]
    for leaf, v in (("access-vlan", p.access_vlan), ("vrf", p.vrf), ("vni", p.vni), ("mtu", p.mtu)):
        if v is not None:
            parts.append(f"<{leaf}>{_esc(v)}</{leaf}>")
    for leaf, v in (("access-vlan", p.access_vlan), ("vrf", p.vrf), ("vni", p.vni)):
        if v is None:
            parts.append(_remove(leaf))
    return f"<port>{''.join(parts)}</port>"


def render_edit(changes: ChangeSet) -> str:
    """The ``<config>`` of one edit-config for all changes: new VRFs and VLANs first (ports refer to
    them), then ports, then removals (after the ports have let go of them)."""
    parts = []
    for n, vni in changes.vrfs_set:
        parts.append(f"<vrf><name>{_esc(n)}</name>" + (f"<vni>{vni}</vni>" if vni is not None else "") + "</vrf>")
    for i, vni in changes.vlans_set:
        parts.append(f"<vlan><id>{i}</id>" + (f"<vni>{vni}</vni>" if vni is not None else _remove("vni"))
                     + "</vlan>")
    parts += [render_port(c.name, c.after) for c in changes.ports]
    parts += [f'<vlan nc:operation="remove"><id>{i}</id></vlan>' for i in changes.vlans_delete]
    parts += [f'<vrf nc:operation="remove"><name>{_esc(n)}</name></vrf>' for n in changes.vrfs_delete]
    return f'<config xmlns="{NC_NS}" xmlns:nc="{NC_NS}"><switch xmlns="{NS}">{"".join(parts)}</switch></config>'


def machine_ids_by_port(switch: Mapping) -> dict[str, str]:
    """Port name -> machine id from a SwitchResponse's ``connections``."""
    out = {}
    for c in switch.get("connections") or []:
        nic = c.get("nic") or {}
        if nic.get("name") and c.get("machine_id"):
            out[nic["name"]] = c["machine_id"]
    return out
