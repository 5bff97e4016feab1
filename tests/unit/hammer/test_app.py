"""The Flask app with fakes around it (the integration test has the real peers): the branches the
stand-in cannot produce (417, allocation without image) and the order report -> boot order -> finalize."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

import pytest

from metalcore.bus import JobResult, JobTimeout
from metalcore.hammer import create_app

MID = "m-1"


class FakeAPI:
    def __init__(self):
        self.calls = []
        self.wait_answer = None

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, args))
            if name == "wait_for_allocation":
                return self.wait_answer
            if name == "register_machine":
                return 201, {"id": args[0]["uuid"]}
            if name == "find_machines_by_mac":
                return []
            if name == "get_partition":
                return {"bootconfig": {"kernelurl": "k", "imageurl": "i", "commandline": ""}}
            return {}
        return call

    def names(self):
        return [c[0] for c in self.calls]


class FakeJobs:
    def __init__(self, result=None, error=None):
        self.result, self.error, self.calls = result or JobResult(ok=True, body={}), error, []

    def call(self, name, body, timeout, **kw):
        self.calls.append((name, body))
        if self.error:
            raise self.error
        return self.result

    def submit(self, *a, **kw):
        raise AssertionError("not expected")


class FakeBus:
    def __init__(self):
        self.events = []

    def publish(self, stream, name, body, **kw):
        self.events.append((stream, name, kw.get("machine_id")))


def settings(**kw):
    base = dict(partition_id="p", rack_id="r", change_boot_order=True, boot_order_timeout=1.0,
                boot_fail_open=True, boot_decision_cache=0.0, cidr=ipaddress.ip_interface("10.0.0.1/24"),
                port=4242, metal_api_url="http://api", log_level="info", run_dir="/nonexistent")
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.fixture
def parts():
    api, jobs, bus = FakeAPI(), FakeJobs(), FakeBus()
    app = create_app(settings(), api, bus, jobs=jobs)
    return SimpleNamespace(api=api, jobs=jobs, bus=bus, client=app.test_client())


@pytest.mark.parametrize("machine,status", [
    (None, 304),
    ({"id": MID, "allocation": None}, 417),
    ({"id": MID, "allocation": {"image": None}}, 417),
    ({"id": MID, "allocation": {"image": {"id": "ubuntu"}}}, 200),
])
def test_install_answers(parts, machine, status):
    parts.api.wait_answer = machine
    r = parts.client.get(f"/machine/install/{MID}")
    assert r.status_code == status
    if status == 417:
        assert "message" in r.get_json()
    names = [n for _, n, _ in parts.bus.events]
    assert names[0] == "install-wait"
    assert names[-1] == {304: "install-retry", 417: "install-failed", 200: "install-done"}[status]


REPORT = {"success": True, "primary_disk": "/dev/sda", "os_partition": "/dev/sda1", "console_password": None}


def test_report_sets_boot_order_before_finalize(parts):
    r = parts.client.post(f"/machine/report/{MID}", json=REPORT)
    assert r.status_code == 200
    assert parts.jobs.calls == [("boot-device", {"machine_id": MID, "device": "disk", "persistent": True,
                                                 "efi": True})]
    name, args = parts.api.calls[-1]
    assert name == "finalize_allocation" and args[1]["primarydisk"] == "/dev/sda" and args[1]["console_password"] == ""
    assert ("hammer", "report-done", MID) in parts.bus.events


@pytest.mark.parametrize("jobs,status", [
    (FakeJobs(result=JobResult(ok=False, body={}, error="BMC gone")), 500),
    (FakeJobs(error=JobTimeout("late")), 504),
])
def test_report_boot_order_failure_finalizes_nothing(jobs, status):
    api, bus = FakeAPI(), FakeBus()
    client = create_app(settings(), api, bus, jobs=jobs).test_client()
    r = client.post(f"/machine/report/{MID}", json=REPORT)
    assert r.status_code == status and "not finalized" in r.get_json()["message"]
    assert "finalize_allocation" not in api.names()
    assert ("hammer", "report-failed", MID) in bus.events


def test_register_request_shape(parts):
    r = parts.client.post(f"/machine/register/{MID}", json={"uuid": "ignored", "cpu_cores": 2, "tags": ["x"]})
    assert r.status_code == 200
    _, (req,) = parts.api.calls[-1]
    assert req == {"uuid": MID, "partitionid": "p", "rackid": "r",
                   "hardware": {"memory": 0, "cpu_cores": 2, "nics": [], "disks": []}, "ipmi": None, "bios": None}


def test_event_time_checked(parts):
    assert parts.client.post(f"/machine/{MID}/event", json={"event": "Alive", "time": "yesterday"}).status_code == 400
    assert parts.client.post(f"/machine/{MID}/event", json={"event": None}).status_code == 400
    assert parts.client.post(f"/machine/{MID}/event", json={"event": "Alive", "time": ""}).status_code == 200
    assert parts.api.calls[-1] == ("add_provisioning_event", (MID, {"event": "Alive"}))


def test_control_characters_in_ids_refused(parts):
    assert parts.client.get("/machine/a%01b").status_code == 400


def test_unexpected_error_has_no_trace(parts):
    parts.api.get_machine = None  # calling None raises TypeError inside the view
    r = parts.client.get(f"/machine/{MID}")
    assert r.status_code == 500 and r.get_json() == {"message": "internal error (logged by metalcore)"}
