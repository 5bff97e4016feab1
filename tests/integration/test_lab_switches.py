"""leaf01/leaf02 (netconfd behind one sshd): seed, edit+commit, confirmed-commit rollback, faults."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from ncclient.operations import RPCError
from ncclient.operations.errors import TimeoutExpiredError
from ncclient.transport.errors import SessionCloseError

from metalcore.lab.switches import (PXE_VLAN, PXE_VNI, config_element, connect, port_mac,
                                    running_config)


def _set_tenant(m, port: str, vrf: str, vni: int, confirmed_timeout: str | None = None):
    body = (f'<vrf><name>{vrf}</name><vni>{vni}</vni></vrf>'
            f'<port><name>{port}</name><mode>tenant</mode><vrf>{vrf}</vrf><vni>{vni}</vni>'
            f'<access-vlan nc:operation="remove"/></port>')
    with m.locked("candidate"):
        m.discard_changes()
        m.edit_config(target="candidate", config=config_element(body))
        # No validate(source=candidate) before commit: yuma123 then commits nothing (gotcha 2).
        if confirmed_timeout:
            m.commit(confirmed=True, timeout=confirmed_timeout)
        else:
            m.commit()


def _restore_pxe(m, port: str, vrf: str):
    body = (f'<port><name>{port}</name><mode>access</mode><access-vlan>{PXE_VLAN}</access-vlan>'
            f'<vrf nc:operation="remove"/><vni nc:operation="remove"/></port>'
            f'<vrf nc:operation="remove"><name>{vrf}</name></vrf>')
    with m.locked("candidate"):
        m.discard_changes()
        m.edit_config(target="candidate", config=config_element(body))
        m.commit()


def test_seeded_with_pxe_vlan_and_mirrored_ports(leaf_switches):
    cfgs = {n: running_config(sw) for n, sw in leaf_switches.switches.items()}
    assert set(cfgs) == {"leaf01", "leaf02"}
    assert set(cfgs["leaf01"].ports) == set(cfgs["leaf02"].ports)
    for name, cfg in cfgs.items():
        sw = leaf_switches.switches[name]
        assert cfg.hostname == name
        assert cfg.vlans[PXE_VLAN]["vni"] == PXE_VNI
        for k in range(1, 9):
            p = cfg.ports[f"swp{k}"]
            assert (p["mode"], p["access-vlan"], p["mtu"]) == ("access", PXE_VLAN, 9000)
            assert p["mac"] == port_mac(sw.index, k)
        for up in ("swp31", "swp32"):
            assert cfg.ports[up]["mode"] == "routed" and cfg.ports[up]["mtu"] == 9216
    assert cfgs["leaf01"].ports["swp1"]["mac"] != cfgs["leaf02"].ports["swp1"]["mac"]


def test_edit_commit_readback_on_both_switches(leaf_switches):
    for sw in leaf_switches.switches.values():
        with connect(sw) as m:
            _set_tenant(m, "swp2", "vrf30", 30)
        cfg = running_config(sw)
        assert cfg.ports["swp2"]["mode"] == "tenant"
        assert cfg.ports["swp2"]["vrf"] == "vrf30" and cfg.ports["swp2"]["vni"] == 30
        assert "access-vlan" not in cfg.ports["swp2"]
        assert cfg.vrfs["vrf30"]["vni"] == 30
        with connect(sw) as m:
            _restore_pxe(m, "swp2", "vrf30")
        assert running_config(sw).ports["swp2"]["access-vlan"] == PXE_VLAN


def test_model_rejects_access_port_with_vrf(leaf_switches):
    sw = leaf_switches.switches["leaf01"]
    with connect(sw) as m:
        with pytest.raises(RPCError) as e:
            m.edit_config(target="candidate",
                          config=config_element("<port><name>swp3</name><vrf>default</vrf></port>"))
        m.discard_changes()
    assert "access port" in str(e.value)
    assert running_config(sw).ports["swp3"]["mode"] == "access"


def test_confirmed_commit_rolls_back_when_not_confirmed(leaf_switches):
    sws = list(leaf_switches.switches.values())
    sessions = [connect(sw) for sw in sws]
    try:
        for m in sessions:
            _set_tenant(m, "swp4", "vrf44", 44, confirmed_timeout="1")
        for sw in sws:  # visible before the timer fires (a separate session, read right away)
            assert running_config(sw).ports["swp4"]["mode"] == "tenant"
        # The rollback timer runs only when netconfd has been idle ~1 s (gotcha 3): stay quiet.
        time.sleep(3)
        for sw in sws:
            cfg = running_config(sw)
            assert cfg.ports["swp4"]["mode"] == "access"
            assert cfg.ports["swp4"]["access-vlan"] == PXE_VLAN
            assert "vrf44" not in cfg.vrfs
    finally:
        for m in sessions:
            m.close_session()


def test_stopped_switch_is_unreachable_then_keeps_its_config(leaf_switches):
    sw = leaf_switches.switches["leaf02"]
    with connect(sw) as m:
        _set_tenant(m, "swp5", "vrf55", 55)
    leaf_switches.stop_switch("leaf02")
    try:
        with pytest.raises(SessionCloseError):  # sshd answers, netconf-subsystem finds no netconfd
            with connect(sw, timeout=5) as m:
                m.get_config("running")
    finally:
        leaf_switches.start_switch("leaf02")
    cfg = running_config(sw)  # netconfd writes every commit to its startup file
    assert cfg.ports["swp5"]["vrf"] == "vrf55"
    with connect(sw) as m:
        _restore_pxe(m, "swp5", "vrf55")
    assert running_config(leaf_switches.switches["leaf01"]).ports["swp5"]["mode"] == "access"


def test_connect_applies_the_tick_patch(leaf_switches):
    """Guards the ncclient TICK patch in connect(): without it every RPC takes >= 100 ms (the latency
    itself is measured by bench/bench_switch.py, not asserted here: this machine is shared and noisy)."""
    import ncclient.transport.session as nts
    sw = leaf_switches.switches["leaf01"]
    with connect(sw) as m:
        m.get_config("running")
        assert nts.TICK <= 0.001


def test_parallel_sessions(leaf_switches):
    sw = leaf_switches.switches["leaf01"]
    lost = []

    def read(_):
        # yuma123 now and then leaves one reply of a burst of new sessions unanswered (seen 2 times in ~10
        # CI runs, also by the lab's start-up hello): a fresh session gets it, as the switch stage's driver
        # does after any transport error. Counted, and bounded below.
        try:
            return running_config(sw)
        except TimeoutExpiredError:
            lost.append(1)
            return running_config(sw)

    with ThreadPoolExecutor(12) as ex:
        cfgs = list(ex.map(read, range(12)))
    assert all(c.hostname == "leaf01" for c in cfgs)
    assert len(lost) <= 1, f"{len(lost)} of 12 parallel sessions got no reply"
