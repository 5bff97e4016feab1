"""The real MetalAPIClient against the real stand-in over real HTTP, events through a real nsqd."""

from __future__ import annotations

import time

import httpx
import pytest

from metalcore.clients.metal_api import MetalAPIClient
from metalcore.clients.resilience import CircuitBreaker, RetryPolicy
from metalcore.errors import MetalAPIError, MetalAPIUnavailable
from metalcore.lab.metal_api import spawn
from metalcore.lab.ports import tcp_accepts

MID = "00000000-0000-0000-0000-000000000001"
FINALIZE = {"console_password": "pw", "primarydisk": "/dev/sda", "ospartition": "/dev/sda2", "initrd": "initrd",
            "cmdline": "console=ttyS0", "kernel": "vmlinuz", "bootloaderid": "ubuntu"}


def client_for(lab, **kw) -> MetalAPIClient:
    return MetalAPIClient(lab.url, lab.keys["Metal-Edit"], timeout=5, **kw)


def register_rack(client: MetalAPIClient, mid: str = MID, index: int = 1) -> None:
    for s, sw in enumerate(("leaf01", "leaf02")):
        client.register_switch({"id": sw, "name": sw, "partition_id": "lab", "rack_id": "rack1",
                                "nics": [{"name": f"swp{p}", "mac": f"44:38:39:00:0{s}:{p:02x}"} for p in range(1, 5)]})
    status, m = client.register_machine({
        "uuid": mid, "partitionid": "lab", "rackid": "rack1",
        "hardware": {"cpu_cores": 2, "memory": 2 << 30, "disks": [{"name": "/dev/sda", "size": 10 << 30}],
                     "nics": [{"name": "lan0", "mac": f"52:54:00:00:00:{index:02x}",
                               "neighbors": [{"mac": f"44:38:39:00:00:{index:02x}"}]},
                              {"name": "lan1", "mac": f"52:54:00:00:01:{index:02x}",
                               "neighbors": [{"mac": f"44:38:39:00:01:{index:02x}"}]}]},
        "ipmi": {"address": "127.0.0.1:6230", "user": "metal", "password": "secret", "interface": "lanplus",
                 "mac": "", "bmcversion": "", "fru": {}},
        "bios": {"version": "1.0", "vendor": "lab", "date": "2020-07-13"}, "tags": []})
    assert status == 201 and m["id"] == mid


def test_operator_flow_over_http_with_nsq(metal_api_factory, metal_api_nsqd):
    lab = metal_api_factory(nsqd_http=metal_api_nsqd.http)
    tail = metal_api_nsqd.tail("lab-machine", "core")  # the topic was created at stand-in start
    client = client_for(lab)
    try:
        register_rack(client)
        assert client.find_machines_by_mac("52:54:00:00:00:01")[0]["id"] == MID
        assert client.get_partition("lab")["bootconfig"]["kernelurl"] == "http://lab/metal-hammer-kernel"
        assert client.wait_for_allocation(MID) is None  # the server's 504 after its (2 s) timeout

        # the operator allocates while metal-hammer long-polls
        import threading
        got = {}
        waiter = threading.Thread(target=lambda: got.setdefault("m", client.wait_for_allocation(MID)))
        waiter.start()
        time.sleep(0.3)
        lab.allocate(MID, project="p1")
        waiter.join(5)
        alloc = got["m"]["allocation"]
        assert alloc["project"] == "p1" and alloc["image"]["id"] == "ubuntu-19.10" and not alloc["succeeded"]
        assert [n["vrf"] for n in alloc["networks"] if n["private"]] == [3981]

        assert lab.port_vrfs("leaf01")["swp1"] == ""  # not yet: only finalize sets the vrf
        client.add_provisioning_event(MID, {"event": "Installing", "message": "image"})
        m = client.finalize_allocation(MID, FINALIZE)
        assert m["allocation"]["succeeded"] and m["allocation"]["boot_info"]["primary_disk"] == "/dev/sda"
        for sw in ("leaf01", "leaf02"):
            assert lab.port_vrfs(sw) == {"swp1": "vrf3981", "swp2": "", "swp3": "", "swp4": ""}
        sw = client.get_switch("leaf01")
        assert sw["nics"][0]["filter"] == {"cidrs": ["10.0.16.0/22"], "vnis": None}
        assert sw["connections"] == [{"machine_id": MID, "nic": sw["nics"][0]}]

        lab.free(MID)
        assert tail.next() == {"type": "delete", "old": MID}
        assert lab.port_vrfs("leaf01")["swp1"] == "" and lab.port_vrfs("leaf02")["swp1"] == ""
        assert client.get_machine(MID)["allocation"] is None

        lab.power(MID, "reset")
        assert tail.next() == {"type": "command", "cmd": {"target": MID, "cmd": "RESET"}}
        assert client.get_machine(MID)["events"]["log"][0]["event"] == "Planned Reboot"
        lab.power(MID, "chassis-identify-led-off", "done")
        assert tail.next() == {"type": "command", "cmd": {"target": MID, "cmd": "LED-OFF", "params": ["done"]}}
        assert all(e["delivered_to_nsqd"] for e in lab.events())

        # every call metalcore made was signed as Metal-Edit and is on record
        mine = lab.calls(path_contains="/v1/machine/" + MID)
        assert mine and {c["user"] for c in mine} == {"Metal-Edit"}
    finally:
        tail.close()
        client.close()


def test_firewall_allocation_gets_default_vrf(metal_api):
    client = client_for(metal_api)
    register_rack(client)
    metal_api.allocate(MID, firewall=True)
    client.finalize_allocation(MID, FINALIZE)
    assert metal_api.port_vrfs("leaf01")["swp1"] == "default"
    f = client.get_switch("leaf02")["nics"][0]["filter"]
    assert f["vnis"] == ["3981"] and "185.24.0.0/22" in f["cidrs"]
    client.close()


def test_reinstall_and_abort(metal_api):
    client = client_for(metal_api)
    register_rack(client)
    metal_api.allocate(MID)
    client.finalize_allocation(MID, FINALIZE)
    metal_api.reinstall(MID)
    m = client.wait_for_allocation(MID)
    assert m["allocation"]["reinstall"] is True
    boot = client.abort_reinstall(MID, {"primary_disk_wiped": False})
    assert boot["primary_disk"] == "/dev/sda" and boot["image_id"] == "ubuntu-19.10"
    assert client.abort_reinstall(MID, {"primary_disk_wiped": False}) is None  # nothing pending any more
    assert metal_api.events()[-1]["message"] == {"type": "command", "cmd": {"target": MID, "cmd": "REINSTALL"}}
    client.close()


def test_register_needs_twin_switches(metal_api):
    client = client_for(metal_api)
    with pytest.raises(MetalAPIError) as ei:
        client.register_machine({"uuid": MID, "partitionid": "lab", "hardware": {"nics": []}})
    assert ei.value.status == 422 and "exactly two switches" in ei.value.message
    client.close()


def test_wrong_key_gives_403(metal_api):
    client = client_for(metal_api)
    metal_api.set_faults(wrong_key=True)
    with pytest.raises(MetalAPIError) as ei:
        client.get_machine(MID)
    assert ei.value.status == 403 and ei.value.message == "Wrong HMAC found"
    client.close()


def test_retries_ride_out_injected_5xx(metal_api):
    metal_api.set_faults(error_rate=0.5, seed=4, match="/v1/partition/")
    client = client_for(metal_api, retry=RetryPolicy(max_attempts=8, base_delay=0.01, max_delay=0.05),
                        breaker=CircuitBreaker(failure_threshold=100))
    for _ in range(5):
        assert client.get_partition("lab")["id"] == "lab"
    statuses = [c["status"] for c in metal_api.calls(path_contains="/v1/partition/")]
    assert 500 in statuses and statuses.count(200) == 5
    client.close()


def test_down_503_opens_the_circuit(metal_api):
    metal_api.set_faults(down="503")
    client = client_for(metal_api, retry=RetryPolicy(max_attempts=1),
                        breaker=CircuitBreaker(failure_threshold=2, reset_timeout=0.5))
    for _ in range(2):
        with pytest.raises(MetalAPIError) as ei:
            client.get_partition("lab")
        assert ei.value.status == 503
    with pytest.raises(MetalAPIUnavailable):  # CircuitOpen: no call went out
        client.get_partition("lab")
    assert len(metal_api.calls()) == 2
    metal_api.reset_faults()
    time.sleep(0.6)
    assert client.get_partition("lab")["id"] == "lab"  # the half-open trial closes it
    client.close()


def test_down_refused_then_back(metal_api):
    metal_api.set_faults(down="refused", down_seconds=1.5)
    deadline = time.monotonic() + 5
    while tcp_accepts(metal_api.port):  # the listener closes ~0.2 s after the answer
        assert time.monotonic() < deadline, "listener did not close"
        time.sleep(0.02)
    client = client_for(metal_api, retry=RetryPolicy(max_attempts=1),
                        breaker=CircuitBreaker(failure_threshold=5, reset_timeout=0.3))
    with pytest.raises(MetalAPIUnavailable, match="ConnectError"):
        client.get_partition("lab")
    deadline = time.monotonic() + 10
    while True:
        try:
            assert client.get_partition("lab")["id"] == "lab"
            break
        except MetalAPIUnavailable:
            assert time.monotonic() < deadline, "stand-in did not come back"
            time.sleep(0.2)
    assert metal_api.faults()["down"] is None
    client.close()


def test_latency_and_client_timeout(metal_api):
    metal_api.set_faults(latency=1.0)
    client = MetalAPIClient(metal_api.url, metal_api.keys["Metal-Edit"], timeout=0.3,
                            retry=RetryPolicy(max_attempts=1))
    with pytest.raises(MetalAPIUnavailable, match="timed out"):
        client.get_partition("lab")
    client.close()


def test_basepath(metal_api_factory):
    lab = metal_api_factory(basepath="/metal")
    assert lab.url.endswith("/metal")
    client = client_for(lab)
    assert client.get_partition("lab")["id"] == "lab"
    assert httpx.get(lab.root + "/v1/partition/lab").status_code == 404
    client.close()


def test_spawned_process():
    proc, lab = spawn("--partition", "lab", "--wait-timeout", "1", "--kernelurl", "http://k")
    try:
        client = client_for(lab)
        assert client.get_partition("lab")["bootconfig"]["kernelurl"] == "http://k"
        assert lab.violations() == []
        client.close()
        lab.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
