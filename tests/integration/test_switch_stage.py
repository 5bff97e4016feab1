"""The switch stage against real netconfd leaves (tests/fixtures_lab.py) and the real Metal API stand-in
(tests/fixtures_metal_api.py): registration, allocate/free/firewall, faults, no-op without commit, and the
stage as a real process killed with -9 between the confirmed commit and the confirm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metalcore import config
from metalcore.bus import EventPublisher, EventSubscriber
from metalcore.clients.metal_api import MetalAPIClient
from metalcore.lab import procs
from metalcore.lab.switches import PXE_VLAN, PXE_VNI, connect, running_config
from metalcore.switch.reconcile import SwitchReconciler

REPO = Path(__file__).resolve().parents[2]
MID = "00000000-0000-0000-0000-0000000000a1"
FW = "00000000-0000-0000-0000-0000000000f1"
FINALIZE = {"console_password": "pw", "primarydisk": "/dev/sda", "ospartition": "/dev/sda2", "initrd": "initrd",
            "cmdline": "console=ttyS0", "kernel": "vmlinuz", "bootloaderid": "ubuntu"}
TENANT_VRF, TENANT_VNI = "vrf3981", 3981  # the stand-in's private network


def stage_env(leaves, api, run_dir, **kw) -> dict[str, str]:
    sws = ",".join(f"{n}=netconf://{s.username}:{s.password}@{s.host}:{s.port}" for n, s in leaves.switches.items())
    first = next(iter(leaves.switches.values()))
    env = {"METAL_CORE_PARTITION_ID": "lab", "METAL_CORE_RACK_ID": "rack1",
           "METAL_CORE_HMAC_KEY": api.keys["Metal-Edit"], "METAL_CORE_METAL_API_IP": "127.0.0.1",
           "METAL_CORE_METAL_API_PORT": str(api.port), "METAL_CORE_SWITCHES": sws,
           "METAL_CORE_SPINE_UPLINKS": ",".join(first.uplinks), "METAL_CORE_RECONFIGURE_SWITCH": "true",
           "METAL_CORE_RECONFIGURE_SWITCH_INTERVAL": "3600s", "METAL_CORE_SWITCH_CONFIRM_TIMEOUT": "10s",
           "METAL_CORE_RUN_DIR": str(run_dir), "METAL_CORE_METAL_API_TIMEOUT": "5s"}
    env.update({f"METAL_CORE_{k.upper()}": str(v) for k, v in kw.items()})
    return env


class Rack:
    """In-process reconcilers (one per leaf) against the real switches and the real stand-in."""

    def __init__(self, leaves, api, run_dir, **kw):
        self.leaves, self.lab = leaves, api
        self.settings = config.load("switch", environ=stage_env(leaves, api, run_dir, **kw))
        self.api = MetalAPIClient(api.url, api.keys["Metal-Edit"], timeout=5)
        self.publisher = EventPublisher(str(run_dir), "switch")
        self.sub = EventSubscriber(str(run_dir), streams=["switch"], stages=["switch"])
        time.sleep(0.2)  # ZeroMQ slow joiner: the subscription must be in place before the first event
        self.rec = {t.name: SwitchReconciler(self.settings, t, self.api, self.publisher) for t in self.settings.switches}

    def register(self):
        for r in self.rec.values():
            r.register()

    def reconcile(self) -> dict:
        return {n: r.reconcile() for n, r in self.rec.items()}

    def events(self, wait: float = 0.3) -> list:
        out, deadline = [], time.monotonic() + wait
        while time.monotonic() < deadline:
            env = self.sub.recv(timeout=0.05)
            if env is not None:
                out.append(env)
        return out

    def close(self):
        for r in self.rec.values():
            r.driver.close()
        self.api.close()
        self.sub.close()
        self.publisher.close()


def register_machine(client: MetalAPIClient, leaves, mid: str, port: str) -> None:
    nics = [{"name": f"lan{i}", "mac": f"52:54:00:00:{i:02x}:{int(mid[-2:], 16):02x}",
             "neighbors": [{"mac": sw.port_mac(port)}]} for i, sw in enumerate(leaves.switches.values())]
    status, _ = client.register_machine({
        "uuid": mid, "partitionid": "lab", "rackid": "rack1",
        "hardware": {"cpu_cores": 2, "memory": 2 << 30, "disks": [{"name": "/dev/sda", "size": 10 << 30}],
                     "nics": nics},
        "ipmi": {"address": "127.0.0.1:6230", "user": "metal", "password": "secret", "interface": "lanplus",
                 "mac": "", "bmcversion": "", "fru": {}},
        "bios": {"version": "1.0", "vendor": "lab", "date": "2020-07-13"}, "tags": []})
    assert status in (200, 201)


def startup_stamp(sw) -> tuple[int, bytes]:
    """netconfd runs with-startup false: every commit rewrites startup-cfg.xml (mtime and content)."""
    p = Path(sw.dir) / "startup-cfg.xml"
    return p.stat().st_mtime_ns, p.read_bytes()


def raw_running(sw) -> str:
    return running_config(sw).xml


def reset(leaves, api, run_dir) -> None:
    """Back to what a fresh stand-in says (all PXE), whatever an earlier test left on the module's switches."""
    r = Rack(leaves, api, run_dir)
    try:
        r.register()
        assert {o.outcome for o in r.reconcile().values()} <= {"noop", "applied"}
    finally:
        r.close()


@pytest.fixture
def rack(leaf_switches, metal_api, tmp_path):
    r = Rack(leaf_switches, metal_api, tmp_path / "run")
    r.register()
    r.reconcile()  # whatever an earlier test left on the module's switches: back to what the API says
    yield r
    r.close()


def test_register_then_allocate_finalize_free_on_both_leaves(rack, leaf_switches, metal_api):
    # registration: every port with its MAC read over NETCONF; the partition's boot config on the bus
    for name, sw in leaf_switches.switches.items():
        api_sw = metal_api.switch(name)
        assert {n["name"]: n["mac"] for n in api_sw["nics"]} == {p: sw.port_mac(p) for p in sw.ports + sw.uplinks}
        assert api_sw["rack_id"] == "rack1" and api_sw["partition"]["id"] == "lab"
    rack.register()
    boot = [e for e in rack.events() if e.name == "bootconfig"]
    assert boot and boot[0].body["bootconfig"]["kernelurl"] == "http://lab/metal-hammer-kernel"

    register_machine(rack.api, leaf_switches, MID, "swp3")
    stamps = {n: startup_stamp(sw) for n, sw in leaf_switches.switches.items()}
    assert {o.outcome for o in rack.reconcile().values()} == {"noop"}
    assert {n: startup_stamp(sw) for n, sw in leaf_switches.switches.items()} == stamps  # no commit at all

    metal_api.allocate(MID)
    rack.api.finalize_allocation(MID, FINALIZE)
    outs = rack.reconcile()
    assert {o.outcome for o in outs.values()} == {"applied"}, outs
    for name, sw in leaf_switches.switches.items():
        cfg = running_config(sw)
        p = cfg.ports["swp3"]
        assert (p["mode"], p["vrf"], p["vni"], p["mtu"]) == ("tenant", TENANT_VRF, TENANT_VNI, 9000)
        assert "access-vlan" not in p
        assert cfg.vrfs[TENANT_VRF]["vni"] == TENANT_VNI
        tenant_vlans = [v for v in cfg.vlans.values() if v.get("vni") == TENANT_VNI]
        assert len(tenant_vlans) == 1 and 1001 <= tenant_vlans[0]["id"] <= 2000
        assert cfg.ports["swp1"]["access-vlan"] == PXE_VLAN and cfg.vlans[PXE_VLAN]["vni"] == PXE_VNI
        sync = metal_api.switch(name)["last_sync"]
        assert sync["error"] is None and sync["duration"] > 0
    moved = [e for e in rack.events() if e.name == "port-moved"]
    assert sorted((e.body["switch"], e.body["port"], e.body["from"], e.body["to"]) for e in moved) == [
        ("leaf01", "swp3", "pxe", TENANT_VRF), ("leaf02", "swp3", "pxe", TENANT_VRF)]
    assert {e.machine_id for e in moved} == {MID}

    # nothing changed since: no commit
    stamps = {n: startup_stamp(sw) for n, sw in leaf_switches.switches.items()}
    assert {o.outcome for o in rack.reconcile().values()} == {"noop"}
    assert {n: startup_stamp(sw) for n, sw in leaf_switches.switches.items()} == stamps

    metal_api.free(MID)
    assert {o.outcome for o in rack.reconcile().values()} == {"applied"}
    for sw in leaf_switches.switches.values():
        cfg = running_config(sw)
        p = cfg.ports["swp3"]
        assert (p["mode"], p["access-vlan"], p.get("vrf"), p.get("vni")) == ("access", PXE_VLAN, None, None)
        assert TENANT_VRF not in cfg.vrfs and set(cfg.vlans) == {PXE_VLAN}  # the tenant's VLAN is gone


def test_firewall_machine_gets_a_routed_port_in_vrf_default(rack, leaf_switches, metal_api):
    register_machine(rack.api, leaf_switches, FW, "swp5")
    metal_api.allocate(FW, firewall=True)
    rack.api.finalize_allocation(FW, FINALIZE)
    assert {o.outcome for o in rack.reconcile().values()} == {"applied"}
    for sw in leaf_switches.switches.values():
        p = running_config(sw).ports["swp5"]
        assert (p["mode"], p["vrf"], p["mtu"]) == ("routed", "default", 9216) and "access-vlan" not in p
    metal_api.free(FW)
    assert {o.outcome for o in rack.reconcile().values()} == {"applied"}
    assert running_config(leaf_switches.switches["leaf01"]).ports["swp5"]["mode"] == "access"


def _set_nic(metal_api, switch: str, port: str, vrf: str, add: bool = False) -> None:
    """Fault injection into the stand-in's state: a desired state metal-api would not normally produce."""
    store = metal_api.server.state.store
    with store.lock:
        nics = store.switches[switch]["nics"]
        if add:
            nics.append({"name": port, "mac": "02:99:99:99:99:99", "vrf": vrf, "filter": None})
        else:
            next(n for n in nics if n["name"] == port)["vrf"] = vrf


@pytest.mark.parametrize("fault", ["switch-rejects", "unknown-port", "vlan-range-exhausted"])
def test_desired_state_that_cannot_be_applied_leaves_the_switch_untouched(fault, leaf_switches, metal_api, tmp_path):
    kw = {}
    if fault == "vlan-range-exhausted":
        kw["additional_bridge_vids"] = ",".join(str(i) for i in range(1001, 2001))
    rack = Rack(leaf_switches, metal_api, tmp_path / "run", **kw)
    try:
        rack.register()
        rack.reconcile()
        sw = leaf_switches.switches["leaf01"]
        before, stamp = raw_running(sw), startup_stamp(sw)
        if fault == "switch-rejects":
            _set_nic(metal_api, "leaf01", "swp2", "vrf99999999")  # VNI out of the model's range
            _set_nic(metal_api, "leaf01", "swp4", "vrf40")        # a good change in the same edit: not applied
        elif fault == "unknown-port":
            _set_nic(metal_api, "leaf01", "swp99", "vrf40", add=True)
        else:
            _set_nic(metal_api, "leaf01", "swp2", "vrf40")
        out = rack.rec["leaf01"].reconcile()
        expected = {"switch-rejects": ("error-rejected", "invalid-value"),
                    "unknown-port": ("error-desired", "swp99"),
                    "vlan-range-exhausted": ("error-desired", "VLAN range 1001-2000 exhausted")}[fault]
        assert out.outcome == expected[0] and expected[1] in out.error
        assert raw_running(sw) == before and startup_stamp(sw) == stamp  # byte-identical, never committed
        err = metal_api.switch("leaf01")["last_sync_error"]
        assert expected[1] in err["error"]
        failed = [e for e in rack.events() if e.name == "reconcile-failed"]
        assert failed and expected[1] in failed[0].body["error"]
        # the candidate was discarded and unlocked: another manager can edit at once
        with connect(sw) as m:
            with m.locked("candidate"):
                pass
    finally:
        rack.close()


def test_netconfd_down_error_each_interval_then_converges(leaf_switches, metal_api, tmp_path):
    rack = Rack(leaf_switches, metal_api, tmp_path / "run", reconfigure_switch_interval="1s")
    rec = rack.rec["leaf01"]
    try:
        rack.register()
        rack.reconcile()
        register_machine(rack.api, leaf_switches, MID, "swp6")
        metal_api.allocate(MID)
        rack.api.finalize_allocation(MID, FINALIZE)
        leaf_switches.stop_switch("leaf01")
        rec.start()
        time.sleep(3.5)
        errors = [c for c in metal_api.calls(path_contains="/v1/switch/leaf01/notify")]
        assert rec.stats.outcomes.get("error-switch", 0) >= 2, rec.stats
        err = metal_api.switch("leaf01")["last_sync_error"]
        assert err and "leaf01" in err["error"]
        assert len(errors) >= 2
        leaf_switches.start_switch("leaf01")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and rec.stats.last_outcome not in ("applied", "noop"):
            time.sleep(0.2)
        assert rec.stats.last_outcome in ("applied", "noop"), rec.stats
        rec.stop()
        assert running_config(leaf_switches.switches["leaf01"]).ports["swp6"]["vrf"] == TENANT_VRF
        metal_api.free(MID)
        rack.reconcile()
    finally:
        rec.stop()
        rack.close()


def test_dry_run_computes_publishes_and_notifies_but_applies_nothing(leaf_switches, metal_api, tmp_path):
    reset(leaf_switches, metal_api, tmp_path / "reset")
    rack = Rack(leaf_switches, metal_api, tmp_path / "run", reconfigure_switch="false")
    try:
        rack.register()
        register_machine(rack.api, leaf_switches, MID, "swp7")
        metal_api.allocate(MID)
        rack.api.finalize_allocation(MID, FINALIZE)
        stamps = {n: startup_stamp(sw) for n, sw in leaf_switches.switches.items()}
        outs = rack.reconcile()
        assert {o.outcome for o in outs.values()} == {"dry-run"}
        assert {n: startup_stamp(sw) for n, sw in leaf_switches.switches.items()} == stamps
        diffs = [e.body for e in rack.events() if e.name == "diff"]
        assert {d["switch"] for d in diffs} == {"leaf01", "leaf02"}
        assert diffs[0]["ports"] == [{"port": "swp7", "from": "pxe", "to": TENANT_VRF}]
        assert metal_api.switch("leaf01")["last_sync"]["error"] is None
        metal_api.free(MID)
    finally:
        rack.close()


# --- the stage as a real process -------------------------------------------------------------------------

def _start_stage(env: dict, log: Path) -> subprocess.Popen:
    out = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "stages.switch"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"})


def _wait(pred, timeout: float, what: str, every: float = 0.2):
    return procs.wait_for(pred, timeout, every, what)


def test_stage_process_killed_between_commit_and_confirm_rolls_back_then_converges(
        leaf_switches, metal_api, tmp_path):
    reset(leaf_switches, metal_api, tmp_path / "reset")  # so the stage's first reconcile commits nothing
    run_dir = tmp_path / "run"
    log = tmp_path / "switch-stage.log"
    env = stage_env(leaf_switches, metal_api, run_dir, metrics_server_port="0", switch_confirm_timeout="4s",
                    switch_test_confirm_delay="60s")
    client = MetalAPIClient(metal_api.url, metal_api.keys["Metal-Edit"], timeout=5)
    sw1 = leaf_switches.switches["leaf01"]
    proc = _start_stage(env, log)
    trigger = None
    try:
        # the stage registers both leaves and finds them all-PXE (no commit, so no delay)
        _wait(lambda: len(metal_api.calls(path_contains="/notify")) >= 2, 30, "first notify of both switches")
        register_machine(client, leaf_switches, MID, "swp8")
        metal_api.allocate(MID)
        client.finalize_allocation(MID, FINALIZE)
        before = {n: raw_running(sw) for n, sw in leaf_switches.switches.items()}
        # the trigger a hammer report would give (interval is 1 h: only the trigger can start this one)
        trigger = EventPublisher(str(run_dir), "hammer_proxy")
        time.sleep(0.5)
        trigger.publish("hammer", "report-done", {"id": MID}, machine_id=MID)
        _wait(lambda: running_config(sw1).ports["swp8"].get("vrf") == TENANT_VRF, 20,
              "the confirmed commit to show in running", every=0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # the switch rolls back by itself (the session died; failing that, the 4 s confirm timer, which
        # yuma123 runs only while idle: poll slowly)
        for n, sw in leaf_switches.switches.items():
            _wait(lambda: raw_running(sw) == before[n], 30, f"{n} to roll back", every=1.5)
            assert running_config(sw).ports["swp8"]["access-vlan"] == PXE_VLAN
        # a new stage (no test delay) converges on its first reconcile
        env["METAL_CORE_SWITCH_TEST_CONFIRM_DELAY"] = "0"
        proc = _start_stage(env, log)
        for sw in leaf_switches.switches.values():
            _wait(lambda: running_config(sw).ports["swp8"].get("vrf") == TENANT_VRF, 30,
                  f"{sw.name} to converge", every=0.5)
        time.sleep(1.5)  # past any confirm timeout: it stays, it was confirmed
        assert running_config(sw1).ports["swp8"]["vrf"] == TENANT_VRF
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        metal_api.free(MID)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if trigger is not None:
            trigger.close()
        client.close()
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]


def test_driver_retries_a_locked_candidate_then_applies(leaf_switches):
    """lock-denied is the one error retried (by tag): another manager holds the candidate for a moment."""
    import threading

    from metalcore.switch import models
    from metalcore.switch.base import SwitchBusy
    from metalcore.switch.netconf_leaf import NetconfLeafDriver

    sw = leaf_switches.switches["leaf02"]
    target = config.SwitchTarget(sw.name, sw.host, sw.port, sw.username, sw.password)
    drv = NetconfLeafDriver(target, confirm_timeout=10, lock_attempts=6, lock_backoff=0.2)
    running = drv.read_running()
    nics = [{"name": p, "vrf": ""} for p in sw.ports]
    nics[0]["vrf"] = "vrf77"
    changes = models.diff(models.desired_state(nics, running, spine_uplinks=sw.uplinks), running)
    held, release = threading.Event(), threading.Event()

    def other_manager():
        with connect(sw) as m, m.locked("candidate"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=other_manager)
    t.start()
    try:
        held.wait(10)
        threading.Timer(0.5, release.set).start()
        res = drv.apply(changes)
        assert res.attempts > 1 and running_config(sw).ports["swp1"]["vrf"] == "vrf77"
        # held for longer than all attempts: SwitchBusy, nothing changed
        back = models.diff(models.desired_state([{"name": p, "vrf": ""} for p in sw.ports], res.running,
                                                spine_uplinks=sw.uplinks), res.running)
        release.clear()
        t.join(10)
        t = threading.Thread(target=other_manager)
        t.start()
        held.clear()
        held.wait(10)
        drv.lock_attempts = 2
        with pytest.raises(SwitchBusy, match="lock"):
            drv.apply(back)
        release.set()
        t.join(10)
        drv.apply(back)
        assert running_config(sw).ports["swp1"]["access-vlan"] == PXE_VLAN
    finally:
        release.set()
        t.join(10)
        drv.close()
