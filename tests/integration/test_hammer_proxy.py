"""The hammer proxy over real HTTP, in front of the real Metal API stand-in, with a real IPMI job worker
on the ZeroMQ bus (a small JobWorker in this test that records jobs and succeeds or fails on demand).

Nothing is mocked: metal-hammer's side is httpx against the served app (waitress on a free port).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from metalcore import config
from metalcore.bus import EventPublisher, EventSubscriber, JobFailed, JobWorker
from metalcore.clients import MetalAPIClient, RetryPolicy
from metalcore.hammer import close_app, create_app
from metalcore.protocol.envelope import trace_id_for
from stages.hammer_proxy import serve, shutdown
from tests.fixtures_metal_api import METAL_API_KEYS

REPO = Path(__file__).resolve().parents[2]
EDIT_KEY = METAL_API_KEYS["Metal-Edit"]
MACHINE = "00000000-0000-0000-0000-0000000000a1"
SWITCH_MACS = {"leaf01": "aa:00:00:00:01:01", "leaf02": "aa:00:00:00:02:01"}


def register_body(nic_mac: str = "bb:00:00:00:00:01") -> dict:
    """What metal-hammer @390024d sends (research note §1.2), connected to both leaves."""
    return {
        "uuid": MACHINE, "cpu_cores": 4, "memory": 8 << 30,
        "nics": [{"name": "eth0", "mac": nic_mac, "neighbors": [{"mac": SWITCH_MACS["leaf01"], "name": None,
                                                                 "neighbors": []}]},
                 {"name": "eth1", "mac": "bb:00:00:00:00:02",
                  "neighbors": [{"mac": SWITCH_MACS["leaf02"], "name": None, "neighbors": []}]}],
        "disks": [{"name": "/dev/sda", "size": 480103981056, "primary": False, "partitions": []}],
        "ipmi": {"address": "10.1.2.3:623", "mac": "cc:00:00:00:00:01", "user": "metal", "password": "secret",
                 "interface": "lanplus", "bmcversion": "1.73.12",
                 "fru": {"chassis_part_number": "", "chassis_part_serial": "", "board_mfg": "",
                         "board_mfg_serial": "", "board_part_number": "", "product_manufacturer": "",
                         "product_part_number": "", "product_serial": ""}},
        "bios": {"version": "2.0", "vendor": "lab", "date": "2020-01-01"},
    }


REPORT = {"success": True, "message": "", "console_password": "pw", "primary_disk": "/dev/sda",
          "os_partition": "/dev/sda2", "initrd": "/boot/initrd.img", "cmdline": "console=ttyS0",
          "kernel": "/boot/vmlinuz", "bootloaderid": "metal-ubuntu"}


@dataclass
class IpmiWorker:
    """A real JobWorker for the ``ipmi`` stage that records boot-device jobs."""
    run_dir: str
    mode: str = "ok"           # ok | fail
    jobs: list = field(default_factory=list)
    worker: JobWorker | None = None

    def handle(self, env):
        self.jobs.append({"name": env.name, **env.body, "trace_id": env.trace_id})
        if self.mode == "fail":
            raise JobFailed("BMC 10.1.2.3 did not answer (lab)")
        return {"device": env.body["device"]}

    def start(self) -> "IpmiWorker":
        self.worker = JobWorker(self.run_dir, "ipmi", self.handle, concurrency=4).start()
        return self

    def stop(self) -> None:
        if self.worker:
            self.worker.stop(drain_timeout=1)


@dataclass
class Hammer:
    """One served hammer proxy and what is around it."""
    url: str
    http: httpx.Client
    metal_api: object
    ipmi: IpmiWorker | None
    events: EventSubscriber
    settings: object
    app: object

    seen: list = field(default_factory=list)

    def bus_events(self, machine_id: str | None = None, timeout: float = 1.0) -> list:
        """Every hammer event so far (kept), after reading for ``timeout`` more seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            env = self.events.recv(0.05)
            if env is not None:
                self.seen.append(env)
        return [e for e in self.seen if machine_id is None or e.machine_id == machine_id]

    def wait_event(self, name: str, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        while True:
            for env in self.seen:
                if env.name == name:
                    return env
            if time.monotonic() > deadline:
                raise AssertionError(f"no hammer.{name} on the bus within {timeout} s: "
                                     f"{[e.name for e in self.seen]}")
            env = self.events.recv(0.05)
            if env is not None:
                self.seen.append(env)


def settings_for(lab, run_dir: str, **overrides) -> object:
    env = {"METAL_CORE_CIDR": "10.0.0.1/24", "METAL_CORE_PARTITION_ID": "lab", "METAL_CORE_RACK_ID": "rack-1",
           "METAL_CORE_HMAC_KEY": EDIT_KEY, "METAL_CORE_METAL_API_IP": "127.0.0.1",
           "METAL_CORE_METAL_API_PORT": str(lab.port), "METAL_CORE_PORT": "4242",
           "METAL_CORE_RUN_DIR": run_dir, "METAL_CORE_BOOT_DECISION_CACHE": "0",
           "METAL_CORE_BOOT_ORDER_TIMEOUT": "3s"}
    env.update({f"METAL_CORE_{k.upper()}": str(v) for k, v in overrides.items()})
    return config.load("hammer_proxy", environ=env)


@pytest.fixture
def hammer_factory(metal_api):
    made = []
    run_dir = tempfile.mkdtemp(prefix="mc-hp-")  # short: ipc socket paths are limited to ~107 bytes
    publisher = EventPublisher(run_dir, "hammer_proxy")

    def make(*, ipmi: bool = True, client_timeout: float = 5.0, hmac_key: str = EDIT_KEY, **overrides) -> Hammer:
        s = settings_for(metal_api, run_dir, **overrides)
        worker = IpmiWorker(run_dir).start() if ipmi else None
        client = MetalAPIClient(metal_api.url, hmac_key, timeout=client_timeout,
                                retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02))
        app = create_app(s, client, publisher)
        server = serve(app, "127.0.0.1", 0, threads=32)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.effective_port}"
        sub = EventSubscriber(run_dir, ["hammer"], stages=["hammer_proxy"])
        time.sleep(0.2)  # ZeroMQ slow joiner: let the SUB connect before the first event
        h = Hammer(url, httpx.Client(base_url=url, timeout=30), metal_api, worker, sub, s, app)
        made.append((h, server, client, thread))
        return h

    yield make
    for h, server, client, thread in made:
        h.http.close()
        h.events.close()
        shutdown(server, thread)
        close_app(h.app)
        client.close()
        if h.ipmi:
            h.ipmi.stop()
    publisher.close()
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def hammer(hammer_factory) -> Hammer:
    return hammer_factory()


def register_switches(lab) -> None:
    with MetalAPIClient(lab.url, EDIT_KEY) as c:
        for name, mac in SWITCH_MACS.items():
            c.register_switch({"id": name, "name": name, "partition_id": "lab", "rack_id": "rack-1",
                               "nics": [{"name": "swp1", "mac": mac}]})


def finalize_calls(lab) -> list:
    return lab.calls(path_contains="finalize-allocation")


def long_poll(h: Hammer, machine_id: str) -> dict:
    out = {}

    def run():  # as metal-hammer: ask again at once on 304
        while True:
            r = h.http.get(f"/machine/install/{machine_id}")
            if r.status_code != 304:
                break
            out["retries"] = out.get("retries", 0) + 1
        out.update(status=r.status_code, body=r.json() if r.content else None)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    out["thread"] = t
    return out


def install_machine(h: Hammer) -> None:
    """register -> allocate -> report, the machine ends allocated and succeeded."""
    register_switches(h.metal_api)
    assert h.http.post(f"/machine/register/{MACHINE}", json=register_body()).status_code == 200
    h.metal_api.allocate(MACHINE)
    assert h.http.get(f"/machine/install/{MACHINE}").status_code == 200
    assert h.http.post(f"/machine/report/{MACHINE}", json=REPORT).status_code == 200


# --- the whole sequence ----------------------------------------------------------------------------------

def test_full_hammer_sequence(hammer):
    h, lab = hammer, hammer.metal_api
    register_switches(lab)
    assert h.http.get("/v1/dhcp/" + MACHINE).json() == {}
    r = h.http.post(f"/machine/{MACHINE}/event", json={"event": "Preparing", "message": "starting metal-hammer"})
    assert (r.status_code, r.json()) == (200, {})
    r = h.http.post(f"/machine/register/{MACHINE}", json=register_body())
    assert r.status_code == 200, r.text  # the Metal API said 201 (created); the spec says 200
    assert r.json()["id"] == MACHINE and r.json()["rackid"] == "rack-1"
    reg = lab.calls(path_contains="/v1/machine/register")[-1]
    assert reg["body"]["uuid"] == MACHINE and reg["body"]["partitionid"] == "lab"
    assert reg["body"]["hardware"]["cpu_cores"] == 4 and len(reg["body"]["hardware"]["nics"]) == 2
    assert reg["body"]["ipmi"]["address"] == "10.1.2.3:623" and reg["status"] == 201
    # the machine is registered and unallocated: discovery
    assert h.http.get("/v1/boot/bb:00:00:00:00:01").status_code == 200

    poll = long_poll(h, MACHINE)
    h.wait_event("install-wait")
    time.sleep(0.3)
    assert poll["thread"].is_alive(), "install answered before the allocation"
    assert REGISTRY.get_sample_value("metalcore_hammer_proxy_long_polls_held") == 1
    lab.allocate(MACHINE)
    poll["thread"].join(10)
    assert poll["status"] == 200 and poll["body"]["allocation"]["image"]["id"] == "ubuntu-19.10"

    r = h.http.post(f"/machine/report/{MACHINE}", json=REPORT)
    assert r.status_code == 200, r.text
    assert h.ipmi.jobs == [{"name": "boot-device", "machine_id": MACHINE, "device": "disk", "persistent": True,
                            "efi": True, "trace_id": trace_id_for(MACHINE)}]
    fin = finalize_calls(lab)
    assert len(fin) == 1 and fin[0]["body"] == {
        "console_password": "pw", "primarydisk": "/dev/sda", "ospartition": "/dev/sda2",
        "initrd": "/boot/initrd.img", "cmdline": "console=ttyS0", "kernel": "/boot/vmlinuz",
        "bootloaderid": "metal-ubuntu"}
    assert lab.machine(MACHINE)["allocation"]["succeeded"] is True

    events = h.bus_events(MACHINE)
    names = [e.name for e in events]
    for wanted in ("dhcp", "event", "register", "install-wait", "install-done", "boot-device", "report-done"):
        assert wanted in names, (wanted, names)
    assert all(e.trace_id == trace_id_for(MACHINE) for e in events)
    done = next(e for e in events if e.name == "report-done")
    assert done.body["status"] == 200

    # installed: the machine now boots from disk
    r = h.http.get("/v1/boot/bb:00:00:00:00:01")
    assert r.status_code == 404 and "boot from disk" in r.json()["message"]
    r = h.http.get(f"/machine/{MACHINE}")
    assert r.status_code == 200 and r.json()["allocation"]["succeeded"] is True


# --- boot ---------------------------------------------------------------------------------------------------

def test_boot_unknown_mac_gets_discovery(hammer):
    r = hammer.http.get("/v1/boot/AA-BB-CC-DD-EE-01")
    assert r.status_code == 200
    assert r.json() == {"kernel": "http://lab/metal-hammer-kernel", "initrd": ["http://lab/metal-hammer-initrd.img.lz4"],
                        "cmdline": f"console=ttyS0 ip=dhcp METAL_CORE_ADDRESS=10.0.0.1:4242 "
                                   f"METAL_API_URL=http://127.0.0.1:{hammer.metal_api.port}"}
    find = hammer.metal_api.calls(path_contains="/v1/machine/find")[-1]
    assert find["body"] == {"nics_mac_addresses": ["aa:bb:cc:dd:ee:01"]}
    env = hammer.wait_event("boot")
    assert env.mac == "aa:bb:cc:dd:ee:01" and env.body["verdict"] == "discovery"


def test_boot_debug_adds_debug_flag(hammer_factory):
    h = hammer_factory(log_level="debug")
    assert h.http.get("/v1/boot/aa:bb:cc:dd:ee:02").json()["cmdline"].endswith(" DEBUG=1")


def test_boot_bad_mac_is_400(hammer):
    r = hammer.http.get("/v1/boot/not-a-mac")
    assert r.status_code == 400 and "not a MAC address" in r.json()["message"]


def test_boot_fail_open_keeps_last_good_bootconfig(hammer):
    assert hammer.http.get("/v1/boot/aa:bb:cc:dd:ee:03").status_code == 200
    hammer.metal_api.set_faults(down="503")
    r = hammer.http.get("/v1/boot/aa:bb:cc:dd:ee:03")
    assert r.status_code == 200 and r.json()["kernel"] == "http://lab/metal-hammer-kernel"
    assert hammer.wait_event("boot").body["verdict"] == "discovery"


def test_boot_fail_closed(hammer_factory):
    h = hammer_factory(boot_fail_open="false")
    h.metal_api.set_faults(down="503")
    r = h.http.get("/v1/boot/aa:bb:cc:dd:ee:04")
    assert r.status_code == 503 and "metal-api unavailable" in r.json()["message"]


def test_boot_decisions_are_cached(hammer_factory):
    h = hammer_factory(boot_decision_cache="30s")
    for _ in range(5):
        assert h.http.get("/v1/boot/aa:bb:cc:dd:ee:05").status_code == 200
    assert len(h.metal_api.calls(path_contains="/v1/machine/find")) == 1


def test_dhcp_with_metal_api_down_is_still_200(hammer):
    hammer.metal_api.set_faults(down="503")
    r = hammer.http.get("/v1/dhcp/" + MACHINE)
    assert (r.status_code, r.json()) == (200, {})
    env = hammer.wait_event("dhcp-failed")
    assert env.machine_id == MACHINE and "503" in env.body["error"]


# --- install -------------------------------------------------------------------------------------------------

def test_install_not_yet_allocated_is_304(hammer):
    register_switches(hammer.metal_api)
    hammer.http.post(f"/machine/register/{MACHINE}", json=register_body())
    t0 = time.monotonic()
    r = hammer.http.get(f"/machine/install/{MACHINE}")
    assert r.status_code == 304 and r.content == b""
    assert time.monotonic() - t0 >= 1.5  # held until the stand-in's 2 s server timeout
    hammer.wait_event("install-retry")


def test_install_unknown_machine_is_404(hammer):
    r = hammer.http.get("/machine/install/no-such-machine")
    assert r.status_code == 404 and "no-such-machine" in r.json()["message"]


# --- report --------------------------------------------------------------------------------------------------

def _registered_and_allocated(h: Hammer) -> None:
    register_switches(h.metal_api)
    assert h.http.post(f"/machine/register/{MACHINE}", json=register_body()).status_code == 200
    h.metal_api.allocate(MACHINE)


def test_report_failed_install_is_406_and_finalizes_nothing(hammer):
    _registered_and_allocated(hammer)
    r = hammer.http.post(f"/machine/report/{MACHINE}", json={**REPORT, "success": False, "message": "disk full"})
    assert r.status_code == 406 and "disk full" in r.json()["message"]
    assert finalize_calls(hammer.metal_api) == [] and hammer.ipmi.jobs == []
    assert hammer.wait_event("report-failed").body["status"] == 406


def test_report_boot_order_failure_is_500_and_no_finalize(hammer):
    _registered_and_allocated(hammer)
    hammer.ipmi.mode = "fail"
    r = hammer.http.post(f"/machine/report/{MACHINE}", json=REPORT)
    assert r.status_code == 500
    assert "did not answer (lab)" in r.json()["message"] and "not finalized" in r.json()["message"]
    assert finalize_calls(hammer.metal_api) == []
    assert hammer.metal_api.machine(MACHINE)["allocation"]["succeeded"] is False


def test_report_ipmi_stage_away_is_504_and_no_finalize(hammer_factory):
    h = hammer_factory(ipmi=False, boot_order_timeout="1s")
    _registered_and_allocated(h)
    r = h.http.post(f"/machine/report/{MACHINE}", json=REPORT)
    assert r.status_code == 504 and "did not set boot device disk" in r.json()["message"]
    assert finalize_calls(h.metal_api) == []


def test_report_without_boot_order_change_only_finalizes(hammer_factory):
    h = hammer_factory(change_boot_order="false")
    _registered_and_allocated(h)
    assert h.http.post(f"/machine/report/{MACHINE}", json=REPORT).status_code == 200
    assert len(finalize_calls(h.metal_api)) == 1 and h.ipmi.jobs == []


def test_report_finalize_failure_restores_pxe(hammer):
    register_switches(hammer.metal_api)
    hammer.http.post(f"/machine/register/{MACHINE}", json=register_body())  # registered, NOT allocated
    r = hammer.http.post(f"/machine/report/{MACHINE}", json=REPORT)
    assert r.status_code == 422 and "not allocated" in r.json()["message"]
    assert [j["device"] for j in hammer.ipmi.jobs] == ["disk", "pxe"]


def test_report_bad_bodies(hammer):
    r = hammer.http.post(f"/machine/report/{MACHINE}", content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
    r = hammer.http.post(f"/machine/report/{MACHINE}", json={"success": "yes"})
    assert r.status_code == 400 and r.json()["message"].startswith("success:")
    r = hammer.http.post(f"/machine/report/{MACHINE}", json={"message": "x"})
    assert r.status_code == 400 and "'success' is a required property" in r.json()["message"]
    r = hammer.http.post(f"/machine/report/{MACHINE}", json=[1])
    assert r.status_code == 400
    assert finalize_calls(hammer.metal_api) == []


# --- the other routes ----------------------------------------------------------------------------------------

def test_event_forwarded_and_refused(hammer):
    r = hammer.http.post(f"/machine/{MACHINE}/event", json={"event": "Installing", "message": "ubuntu"})
    assert (r.status_code, r.json()) == (200, {})
    ev = hammer.metal_api.calls(path_contains="/event")[-1]
    assert ev["path"].endswith(f"/v1/machine/{MACHINE}/event") and ev["body"]["event"] == "Installing"
    r = hammer.http.post(f"/machine/{MACHINE}/event", json={"event": "Dancing"})
    assert r.status_code == 422 and "Dancing" in r.json()["message"]  # the Metal API's 4xx, passed through
    r = hammer.http.post(f"/machine/{MACHINE}/event", json={"message": "no type"})
    assert r.status_code == 400 and "'event' is a required property" in r.json()["message"]


def test_register_validation_names_the_field(hammer):
    body = register_body()
    body["nics"][1]["neighbors"][0]["mac"] = 42
    r = hammer.http.post(f"/machine/register/{MACHINE}", json=body)
    assert r.status_code == 400 and r.json()["message"].startswith("nics/1/neighbors/0/mac:")
    assert hammer.metal_api.calls(path_contains="/register") == []


def test_register_refused_by_metal_api(hammer):
    # no switches registered: the Metal API refuses a machine without two switch neighbours (422)
    r = hammer.http.post(f"/machine/register/{MACHINE}", json=register_body())
    assert r.status_code == 422 and "two switches" in r.json()["message"]
    hammer.wait_event("register-failed")


def test_get_machine(hammer):
    r = hammer.http.get("/machine/unknown-machine")
    assert r.status_code == 404 and "unknown-machine" in r.json()["message"]


def test_abort_reinstall_puts_the_id_in_the_path(hammer):
    install_machine(hammer)
    hammer.metal_api.reinstall(MACHINE)
    hammer.ipmi.jobs.clear()
    r = hammer.http.post(f"/machine/abort-reinstall/{MACHINE}", json={"primary_disk_wiped": False})
    assert r.status_code == 200 and r.json()["primary_disk"] == "/dev/sda"
    call = hammer.metal_api.calls(path_contains="abort-reinstall")[-1]
    assert call["path"].endswith(f"/v1/machine/{MACHINE}/abort-reinstall")
    assert call["body"] == {"primary_disk_wiped": False}
    assert [j["device"] for j in hammer.ipmi.jobs] == ["disk"]


def test_abort_reinstall_wiped_answers_null(hammer):
    install_machine(hammer)
    hammer.metal_api.reinstall(MACHINE)
    r = hammer.http.post(f"/machine/abort-reinstall/{MACHINE}", json={"primary_disk_wiped": True})
    assert r.status_code == 200 and r.json() is None


def test_limits_and_unknown_routes(hammer):
    r = hammer.http.post(f"/machine/register/{MACHINE}", content=b" " * ((1 << 20) + 10),
                         headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "1 MiB" in r.json()["message"]
    r = hammer.http.get("/no/such/route")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    r = hammer.http.delete(f"/machine/{MACHINE}")
    assert r.status_code == 405 and "message" in r.json()
    assert hammer.http.get("/apidocs.json").json()["info"]["title"] == "metal-core"


# --- faults ----------------------------------------------------------------------------------------------

def test_metal_api_slow_is_504(hammer_factory):
    h = hammer_factory(client_timeout=0.5)
    h.metal_api.set_faults(latency=1.5)
    r = h.http.get(f"/machine/{MACHINE}")
    assert r.status_code == 504 and "timed out" in r.json()["message"]


def test_metal_api_5xx_is_502(hammer):
    hammer.metal_api.set_faults(error_rate=1.0, error_status=500)
    r = hammer.http.get(f"/machine/{MACHINE}")
    assert r.status_code == 502 and "500" in r.json()["message"]


def test_metal_api_down_503(hammer):
    hammer.metal_api.set_faults(down="503")
    r = hammer.http.get(f"/machine/{MACHINE}")
    assert r.status_code == 503 and r.headers["retry-after"] == "5" and "lab: down" in r.json()["message"]


def test_metal_api_refusing_connections(hammer):
    hammer.metal_api.set_faults(down="refused", down_seconds=3)
    time.sleep(0.6)  # the stand-in closes its listener 0.2 s after answering
    r = hammer.http.post(f"/machine/{MACHINE}/event", json={"event": "Alive"})
    assert r.status_code == 503 and "unreachable" in r.json()["message"]


def test_metal_api_down_during_report_finalizes_nothing_and_restores_pxe(hammer):
    _registered_and_allocated(hammer)
    hammer.metal_api.set_faults(down="503", match="finalize")
    r = hammer.http.post(f"/machine/report/{MACHINE}", json=REPORT)
    assert r.status_code == 503
    assert hammer.metal_api.machine(MACHINE)["allocation"]["succeeded"] is False
    assert [j["device"] for j in hammer.ipmi.jobs] == ["disk", "pxe"]
    assert hammer.wait_event("report-failed").body["status"] == 503


def test_wrong_hmac_key_is_502_and_says_so(hammer_factory):
    good = hammer_factory()
    _registered_and_allocated(good)
    h = hammer_factory(hmac_key="not-the-key")
    r = h.http.get(f"/machine/{MACHINE}")
    assert r.status_code == 502 and "METAL_CORE_HMAC_KEY" in r.json()["message"]
    r = h.http.post(f"/machine/report/{MACHINE}", json=REPORT)
    assert r.status_code == 502
    assert [c["status"] for c in finalize_calls(h.metal_api)] == [403]
    assert h.metal_api.machine(MACHINE)["allocation"]["succeeded"] is False
    assert [j["device"] for j in h.ipmi.jobs] == ["disk", "pxe"]


# --- metrics ----------------------------------------------------------------------------------------------------

def test_metrics_count_routes_codes_and_upstream(hammer):
    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0
    before = value("metalcore_hammer_proxy_requests_total", route="/machine/<machine_id>", code="404")
    up_before = value("metalcore_hammer_proxy_upstream_seconds_count", call="machine", outcome="error")
    hammer.http.get("/machine/unknown-machine")
    assert value("metalcore_hammer_proxy_requests_total", route="/machine/<machine_id>", code="404") == before + 1
    assert value("metalcore_hammer_proxy_upstream_seconds_count", call="machine", outcome="error") == up_before + 1
    assert REGISTRY.get_sample_value("metalcore_hammer_proxy_long_polls_held") == 0


# --- schemathesis against the served spec -------------------------------------------------------------------

def test_schemathesis_finds_no_server_error_and_no_schema_violation(hammer, tmp_path):
    st = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
    assert st, "schemathesis missing: .venv/bin/pip install schemathesis"
    report = tmp_path / "st.json"
    proc = subprocess.run(
        [st, "run", f"{hammer.url}/apidocs.json", "--url", hammer.url, "--max-examples", "25", "--seed", "1",
         "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance",
         # not content_type_conformance: a 304 (install, "ask again") has no body and werkzeug rightly
         # drops its Content-Type, which that check reads as a violation of "produces"
         "--phases", "examples,coverage,fuzzing", "--no-shrink",
         "--request-timeout", "10", "--workers", "1", "--report", "junit", "--report-junit-path", str(report)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


# --- the stage process ----------------------------------------------------------------------------------------

def test_stage_serves_and_stops_cleanly(metal_api, tmp_path):
    run_dir = tempfile.mkdtemp(prefix="mc-hps-")
    port = _free_port()
    env = {**os.environ, "METAL_CORE_CIDR": "10.0.0.1/24", "METAL_CORE_PARTITION_ID": "lab",
           "METAL_CORE_RACK_ID": "rack-1", "METAL_CORE_HMAC_KEY": EDIT_KEY, "METAL_CORE_METAL_API_IP": "127.0.0.1",
           "METAL_CORE_METAL_API_PORT": str(metal_api.port), "METAL_CORE_PORT": str(port),
           "METAL_CORE_BIND_ADDRESS": "127.0.0.1", "METAL_CORE_RUN_DIR": run_dir,
           "METAL_CORE_METRICS_SERVER_PORT": "0", "METAL_CORE_HAMMER_THREADS": "16"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.hammer_proxy"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/boot/aa:bb:cc:dd:ee:09", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "stage did not listen"
                time.sleep(0.1)
        assert r.status_code == 200 and "METAL_CORE_ADDRESS=10.0.0.1:" in r.json()["cmdline"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
