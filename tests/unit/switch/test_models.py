"""Pure switch model: desired state (§4.3), VLAN allocation, diff, verification, XML (exact strings)."""

import pytest

from metalcore.switch import models as m
from metalcore.switch.models import PortState

PXE = PortState("access", access_vlan=4000, mtu=9000)
UPLINK = PortState("routed", mtu=9216)
HEAD = ('<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">'
        '<switch xmlns="urn:metalcore:lab:leaf">')
TAIL = "</switch></config>"


def running(ports=None, vlans=None, vrfs=None):
    p = {f"swp{k}": PXE for k in range(1, 5)}
    p.update({"swp31": UPLINK, "swp32": UPLINK})
    p.update(ports or {})
    return m.SwitchConfig(ports=p, vlans={4000: 104000, **(vlans or {})}, vrfs={"default": None, **(vrfs or {})},
                          hostname="leaf01")


def nics(**vrfs):
    return [{"name": f"swp{k}", "mac": "x", "vrf": vrfs.get(f"swp{k}", "")} for k in range(1, 5)]


def test_pxe_vni():
    assert m.pxe_vni(4000) == 104000 and m.pxe_vni(42) == 100042


def test_all_pxe_is_a_noop():
    r = running()
    ch = m.diff(m.desired_state(nics(), r), r)
    assert ch.empty and ch == m.ChangeSet()


def test_rules_of_4_3():
    r = running()
    d = m.desired_state(nics(swp1="vrf30", swp2="default", swp3="vrf30"), r)
    assert d.ports["swp1"] == PortState("tenant", vrf="vrf30", vni=30, mtu=9000)
    assert d.ports["swp2"] == PortState("routed", vrf="default", mtu=9216)
    assert d.ports["swp4"] == PXE
    assert "swp31" not in d.ports
    assert d.vlans == {4000: 104000, 1001: 30}
    assert d.vrfs == {"default": None, "vrf30": 30}


def test_uplinks_and_additional_bridge_ports_are_left_alone():
    r = running(ports={"swp4": PortState("access", access_vlan=77, mtu=1500)})
    api = nics(swp4="vrf9") + [{"name": "swp31", "vrf": "vrf9"}]
    d = m.desired_state(api, r, additional_bridge_ports=["swp4"])
    assert "swp4" not in d.ports and "swp31" not in d.ports
    assert 77 in d.keep_vlans


def test_unknown_port_is_an_error():
    with pytest.raises(m.UnknownPort, match="swp99"):
        m.desired_state(nics() + [{"name": "swp99", "vrf": "vrf3"}], running())


def test_bad_vrf_is_an_error():
    with pytest.raises(m.BadVrf, match="blue"):
        m.desired_state(nics(swp1="blue"), running())


def test_vlan_stable_per_vni():
    # vrf7 already has VLAN 1500 on the switch: reused; vrf5 gets the lowest free id
    r = running(ports={"swp1": PortState("tenant", vrf="vrf7", vni=7, mtu=9000)}, vlans={1500: 7, 1001: None},
                vrfs={"vrf7": 7})
    d = m.desired_state(nics(swp1="vrf7", swp2="vrf5"), r)
    assert d.vlans == {4000: 104000, 1002: 5, 1500: 7}


def test_vlan_allocation_reuses_stale_tenant_vlans_only_when_needed():
    full = {i: None for i in range(1001, 2001)}
    full[1999] = 42  # a stale tenant VLAN (vni 42 no longer wanted)
    assert m.allocate_vlans([5], full) == {5: 1999}
    assert m.allocate_vlans([5, 6], {1001: 6}) == {6: 1001, 5: 1002}


def test_vlan_range_exhausted():
    with pytest.raises(m.VlanRangeExhausted, match=r"VLAN range 1001-2000 exhausted: 1 tenant VNI\(s\) 5 need a VLAN, 0 free"):
        m.allocate_vlans([5], {i: None for i in range(1001, 2001)})
    with pytest.raises(m.VlanRangeExhausted):
        m.desired_state(nics(swp1="vrf5"), running(), additional_bridge_vids=[str(i) for i in range(1001, 2001)])


def test_diff_and_render_tenant_and_firewall():
    r = running()
    ch = m.diff(m.desired_state(nics(swp1="vrf30", swp2="default"), r), r)
    assert [c.name for c in ch.ports] == ["swp1", "swp2"]
    assert ch.vlans_set == ((1001, 30),) and ch.vrfs_set == (("vrf30", 30),)
    assert m.render_edit(ch) == (
        HEAD + "<vrf><name>vrf30</name><vni>30</vni></vrf><vlan><id>1001</id><vni>30</vni></vlan>"
        "<port><name>swp1</name><mode>tenant</mode><vrf>vrf30</vrf><vni>30</vni><mtu>9000</mtu>"
        '<access-vlan nc:operation="remove"/></port>'
        "<port><name>swp2</name><mode>routed</mode><vrf>default</vrf><mtu>9216</mtu>"
        '<access-vlan nc:operation="remove"/><vni nc:operation="remove"/></port>' + TAIL)
    assert ch.summary(4000)["ports"] == [{"port": "swp1", "from": "pxe", "to": "vrf30"},
                                         {"port": "swp2", "from": "pxe", "to": "default"}]


def test_diff_and_render_back_to_pxe_removes_unused_vrf_and_vlan():
    tenant = PortState("tenant", vrf="vrf30", vni=30, mtu=9000)
    r = running(ports={"swp1": tenant}, vlans={1001: 30, 1100: None}, vrfs={"vrf30": 30, "mgmt": None})
    ch = m.diff(m.desired_state(nics(), r), r)
    assert ch.vlans_delete == (1001,) and ch.vrfs_delete == ("vrf30",)  # 1100 has no VNI: not ours
    assert m.render_edit(ch) == (
        HEAD + "<port><name>swp1</name><mode>access</mode><access-vlan>4000</access-vlan><mtu>9000</mtu>"
        '<vrf nc:operation="remove"/><vni nc:operation="remove"/></port>'
        '<vlan nc:operation="remove"><id>1001</id></vlan><vrf nc:operation="remove"><name>vrf30</name></vrf>' + TAIL)


def test_vrf_used_by_an_unmanaged_port_is_kept():
    tenant = PortState("tenant", vrf="vrf30", vni=30, mtu=9000)
    r = running(ports={"swp1": tenant, "swp9": tenant}, vlans={1001: 30}, vrfs={"vrf30": 30})
    ch = m.diff(m.desired_state(nics(), r), r)
    assert ch.vrfs_delete == () and [c.name for c in ch.ports] == ["swp1"]


def test_unmet_checks_the_read_back():
    r = running()
    ch = m.diff(m.desired_state(nics(swp1="vrf30"), r), r)
    assert len(m.unmet(ch, r)) == 3  # port, vlan, vrf
    after = running(ports={"swp1": PortState("tenant", vrf="vrf30", vni=30, mtu=9000)}, vlans={1001: 30},
                    vrfs={"vrf30": 30})
    assert m.unmet(ch, after) == []


def test_parse_running_fills_yang_defaults():
    xml = ('<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><switch xmlns="urn:metalcore:lab:leaf">'
           "<hostname>leaf01</hostname><vlan><id>4000</id><name>pxe</name><vni>104000</vni></vlan>"
           "<vrf><name>default</name></vrf><vrf><name>vrf3</name><vni>3</vni></vrf>"
           "<port><name>swp1</name><mac>02:4c:46:01:00:01</mac><access-vlan>4000</access-vlan></port>"
           "<port><name>swp2</name><mode>tenant</mode><vrf>vrf3</vrf><vni>3</vni><mtu>9000</mtu></port>"
           "</switch></data>")
    c = m.parse_running(xml)
    assert c.hostname == "leaf01" and c.macs == {"swp1": "02:4c:46:01:00:01"}
    assert c.ports == {"swp1": PXE, "swp2": PortState("tenant", vrf="vrf3", vni=3, mtu=9000)}
    assert c.vlans == {4000: 104000} and c.vrfs == {"default": None, "vrf3": 3}


def test_machine_ids_by_port():
    sw = {"connections": [{"machine_id": "m1", "nic": {"name": "swp1"}}, {"machine_id": "", "nic": {"name": "swp2"}}]}
    assert m.machine_ids_by_port(sw) == {"swp1": "m1"}
