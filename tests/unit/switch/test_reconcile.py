"""The reconcile loop with a fake driver and a fake Metal API: outcomes, notify, dry run, coalescing."""

import time

from metalcore import config
from metalcore.errors import MetalAPIError, MetalAPIUnavailable
from metalcore.switch import models as m
from metalcore.switch.base import ApplyResult, SwitchDriver, SwitchRejected, SwitchUnreachable
from metalcore.switch.reconcile import SwitchReconciler, SwitchService

PXE = m.PortState("access", access_vlan=4000, mtu=9000)


def settings(**kw):
    env = {"METAL_CORE_PARTITION_ID": "lab", "METAL_CORE_RACK_ID": "r1", "METAL_CORE_HMAC_KEY": "k",
           "METAL_CORE_SWITCHES": "leaf01=netconf://u:p@127.0.0.1:1", "METAL_CORE_RECONFIGURE_SWITCH": "true",
           "METAL_CORE_RECONFIGURE_SWITCH_INTERVAL": "60s"}
    env.update({f"METAL_CORE_{k.upper()}": str(v) for k, v in kw.items()})
    return config.load("switch", environ=env)


class FakeDriver(SwitchDriver):
    name = "leaf01"

    def __init__(self):
        self.ports = {f"swp{k}": PXE for k in range(1, 4)}
        self.vlans, self.vrfs = {4000: 104000}, {"default": None}
        self.applied = []
        self.fail = None
        self.apply_delay = 0.0

    def read_ports(self):
        if self.fail:
            raise self.fail
        return {n: f"02:00:00:00:00:0{n[3:]}" for n in self.ports}

    def read_running(self):
        if self.fail:
            raise self.fail
        return m.SwitchConfig(ports=dict(self.ports), vlans=dict(self.vlans), vrfs=dict(self.vrfs))

    def apply(self, changes):
        time.sleep(self.apply_delay)
        if isinstance(self.fail, SwitchRejected):
            raise self.fail
        self.applied.append(changes)
        for c in changes.ports:
            self.ports[c.name] = c.after
        self.vlans.update(changes.vlans_set)
        self.vrfs.update(changes.vrfs_set)
        for i in changes.vlans_delete:
            del self.vlans[i]
        for n in changes.vrfs_delete:
            del self.vrfs[n]
        return ApplyResult(self.read_running(), 0.01, 1)

    def close(self):
        pass


class FakeAPI:
    def __init__(self):
        self.vrfs = {"swp1": "", "swp2": "", "swp3": ""}
        self.notified = []
        self.registered = []
        self.gets = 0
        self.down = False

    def register_switch(self, body):
        if self.down:
            raise MetalAPIUnavailable("down")
        self.registered.append(body)
        return 201, {"partition": {"id": "lab", "bootconfig": {"kernelurl": "k"}}}

    def get_switch(self, sid):
        self.gets += 1
        if self.down:
            raise MetalAPIUnavailable("down")
        return {"nics": [{"name": n, "vrf": v} for n, v in self.vrfs.items()],
                "connections": [{"machine_id": "m1", "nic": {"name": "swp1"}}]}

    def notify_switch(self, sid, body):
        if self.down:
            raise MetalAPIUnavailable("down")
        self.notified.append(body)
        return {}


class Pub:
    def __init__(self):
        self.events = []

    def publish(self, stream, name, body=None, **kw):
        self.events.append((stream, name, body, kw))


def make(**kw):
    s = settings(**kw)
    d, api, pub = FakeDriver(), FakeAPI(), Pub()
    return SwitchReconciler(s, s.switches[0], api, pub, driver=d), d, api, pub


def test_register_sends_ports_and_publishes_bootconfig():
    r, d, api, pub = make(additional_bridge_ports="swp3")
    r.register()
    body = api.registered[0]
    assert body["id"] == body["name"] == "leaf01" and body["partition_id"] == "lab" and body["rack_id"] == "r1"
    assert [n["name"] for n in body["nics"]] == ["swp1", "swp2"]
    assert ("switch", "bootconfig") in [(e[0], e[1]) for e in pub.events]


def test_noop_makes_no_apply_and_notifies_success():
    r, d, api, pub = make()
    out = r.reconcile()
    assert out.outcome == "noop" and d.applied == []
    assert api.notified[0]["error"] is None and api.notified[0]["sync_duration"] > 0


def test_apply_publishes_port_moves_with_machine_id():
    r, d, api, pub = make()
    api.vrfs["swp1"] = "vrf30"
    out = r.reconcile()
    assert out.outcome == "applied" and len(d.applied) == 1
    moved = [e for e in pub.events if e[1] == "port-moved"]
    assert moved[0][2] == {"switch": "leaf01", "port": "swp1", "from": "pxe", "to": "vrf30", "machine_id": "m1"}
    assert moved[0][3]["machine_id"] == "m1"
    assert r.reconcile().outcome == "noop"


def test_dry_run_applies_nothing_but_notifies_and_publishes():
    r, d, api, pub = make(reconfigure_switch="false")
    api.vrfs["swp2"] = "default"
    out = r.reconcile()
    assert out.outcome == "dry-run" and d.applied == [] and api.notified[0]["error"] is None
    diff = [e[2] for e in pub.events if e[1] == "diff"][0]
    assert diff["dry_run"] and diff["ports"] == [{"port": "swp2", "from": "pxe", "to": "default"}]


def test_errors_are_notified_and_never_raised():
    r, d, api, pub = make()
    api.vrfs["swp1"] = "vrf30"
    d.fail = SwitchRejected("switch leaf01 rejected edit-config: invalid-value", "invalid-value")
    assert r.reconcile().outcome == "error-rejected"
    assert "invalid-value" in api.notified[-1]["error"]
    d.fail = SwitchUnreachable("switch leaf01 unreachable")
    assert r.reconcile().outcome == "error-switch" and "unreachable" in api.notified[-1]["error"]
    d.fail = None
    api.vrfs["swp9"] = "vrf3"
    out = r.reconcile()
    assert out.outcome == "error-desired" and "swp9" in api.notified[-1]["error"]
    api.down = True
    assert r.reconcile().outcome == "error-api"


def test_404_makes_it_register_again():
    r, d, api, pub = make()
    r.registered = True
    api.get_switch = lambda sid: (_ for _ in ()).throw(MetalAPIError(404, "no switch"))
    assert r.reconcile().outcome == "error-api" and not r.registered


def test_drift_is_noticed():
    r, d, api, pub = make()
    r.reconcile()
    d.ports["swp2"] = m.PortState("access", access_vlan=4000, mtu=1500)  # someone changed it
    assert r.reconcile().outcome == "applied"
    assert [e[2]["ports"] for e in pub.events if e[1] == "drift"] == [["swp2"]]


def test_loop_retries_registration_and_coalesces_triggers():
    r, d, api, pub = make()
    api.down = True
    r.start()
    try:
        time.sleep(0.3)
        assert not r.registered
        api.down = False
        deadline = time.monotonic() + 5
        while r.stats.reconciles < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert r.registered and r.stats.reconciles == 1
        # a slow reconcile; five triggers during it make exactly one more
        d.apply_delay = 0.5
        api.vrfs["swp1"] = "vrf30"
        r.trigger("test")
        time.sleep(0.1)
        for _ in range(5):
            r.trigger("test")
        time.sleep(1.0)
        assert r.stats.reconciles == 3
    finally:
        r.stop()


def test_service_triggers_from_the_bus():
    s = settings()

    class Sub:
        def __init__(self):
            from metalcore.protocol.envelope import Envelope
            self.q = [Envelope(kind="event", stream="hammer", name="report-done", ts=0, source="hammer_proxy"),
                      Envelope(kind="event", stream="hammer", name="other", ts=0, source="hammer_proxy"),
                      Envelope(kind="event", stream="nsq", name="free", ts=0, source="nsq_consumer")]

        def recv(self, timeout=None):
            if self.q:
                return self.q.pop(0)
            time.sleep(0.05)
            return None

        def close(self):
            pass

    api, pub = FakeAPI(), Pub()
    svc = SwitchService(s, api, pub, driver_factory=lambda t: FakeDriver(), subscriber_factory=Sub)
    svc.start()
    try:
        deadline = time.monotonic() + 3
        while svc.triggers < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert svc.triggers == 2
        assert svc.stats()["switches"]["leaf01"]["registered"]
    finally:
        svc.stop()
