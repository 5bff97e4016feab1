"""The whole embedded rack (metalcore/lab/full_rack.py) with metalcore's five stages under the repo's
supervisord.conf: what `scripts/run` starts, in a temporary run directory, for the end-to-end tests.

    rack = start_rack(tmp, machines=1, firmware="bios", bmc_only=20)
    rack.power_on(1); rack.console(1).wait_for("METALCORE-MARKER waiting", 240)
    rack.api.allocate(rack.machine(1).id); rack.ports(1) -> {"leaf01": {"mode": "tenant", "vrf": "vrf3981", ...}}
    rack.kill9("ipmi")                 # SIGKILL by pid; returns once supervisord runs a new one
    stop_rack(rack)

Assertions belong on the peers: the stand-in's call log (rack.api.calls()), the BMC state dir
(rack.bmc(i).events(), .boot_device(), .power()), netconfd's running config (rack.ports(i)) and the VM's
serial console (rack.console(i)). metalcore's own log is only read to know a stage is ready.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

if TYPE_CHECKING:
    from tests.fixtures_supervisor import Supervisor

from metalcore.lab.full_rack import down_full, up_full, write_settings
from metalcore.lab.machines import Console
from metalcore.lab.metal_api.handle import MetalAPILab
from metalcore.lab.procs import MissingPeerBinary
from metalcore.lab.rack import Machine, RackLab
from metalcore.lab.switches import running_config

# tests.fixtures_supervisor is imported where it is used: importing it here, while pytest loads the
# fixtures_* plugins in name order, would import it before pytest can rewrite its asserts
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PXE_VLAN = 4000


def wait_until(fn: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """fn()'s first truthy value; AssertionError naming ``what`` (and the last value) after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
        except Exception as e:  # noqa: BLE001 - a peer that is down right now is a "not yet"
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})"[:2000])
        time.sleep(interval)


@dataclass
class Rack:
    tmp: Path
    lab: RackLab
    sup: "Supervisor"
    api: MetalAPILab
    qemu: int
    consoles: dict[int, Console] = field(default_factory=dict)
    faults: list[dict] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.lab.run_dir

    @property
    def rack_ns(self) -> str:
        return self.lab.service_info["pxe-net"]["rack_ns"]

    @property
    def core_address(self) -> str:
        """Where machines reach the hammer proxy (the initrd's METAL_CORE_ADDRESS)."""
        return f"{self.lab.service_info['pxe-net']['rack_ip']}:4242"

    def machine(self, index: int) -> Machine:
        return self.lab.machine(index)

    def bmc(self, index: int):
        return self.lab.bmc_of(index)

    def console(self, index: int) -> Console:
        """The serial console of QEMU machine ``index``, read from the moment this was first called."""
        if index not in self.consoles:
            d = self.run_dir / "lab" / "machines" / f"machine{index:03d}"
            # the lab's own reader writes serial.ts.log: a second writer there would double every line
            self.consoles[index] = Console(d / "serial.log", d / "serial.test.ts.log").start()
        return self.consoles[index]

    # --- supervisord ------------------------------------------------------------------------------
    def stage_pid(self, stage: str) -> int:
        return self.sup.rpc().supervisor.getProcessInfo(f"metalcore:{stage}")["pid"]

    def wait_running(self, timeout: float = 60) -> None:
        wait_until(lambda: all(i["statename"] == "RUNNING" for i in self.sup.states().values())
                   and len(self.sup.states()) == 5, timeout, "all five stages RUNNING")

    def kill9(self, stage: str, why: str = "") -> dict:
        """kill -9 the stage by its pid; returns once supervisord runs a new process (recorded in faults)."""
        old = self.stage_pid(stage)
        t = time.time()
        os.kill(old, signal.SIGKILL)

        def restarted() -> dict | None:
            i = self.sup.rpc().supervisor.getProcessInfo(f"metalcore:{stage}")
            return i if i["statename"] == "RUNNING" and i["pid"] not in (0, old) else None

        info = wait_until(restarted, 90, f"supervisord restarting {stage}")
        rec = {"fault": f"kill -9 {stage}", "why": why, "at": t, "old_pid": old, "new_pid": info["pid"],
               "back_after": round(time.time() - t, 1)}
        self.faults.append(rec)
        return rec

    def stop_stage(self, stage: str, why: str = "") -> dict:
        """supervisorctl stop: the stage stays down until start_stage (recorded in faults)."""
        t = time.time()
        self.sup.rpc().supervisor.stopProcess(f"metalcore:{stage}", True)
        rec = {"fault": f"{stage} stage stopped", "why": why, "at": t}
        self.faults.append(rec)
        return rec

    def start_stage(self, stage: str, rec: dict | None = None) -> None:
        self.sup.rpc().supervisor.startProcess(f"metalcore:{stage}", True)
        if rec is not None:
            rec["back_after"] = round(time.time() - rec["at"], 1)

    def stage_log(self, stage: str) -> str:
        try:
            return self.sup.log(stage)
        except FileNotFoundError:
            return ""

    def wait_pxe_open(self, timeout: float = 60) -> None:
        """The pxe stage listens (its log line; a readiness gate, not an assertion): a machine whose DHCP
        discovery ends before that gets no ProxyDHCP offer and falls back to its disk (iPXE does not retry)."""
        pid = self.stage_pid("pxe")
        wait_until(lambda: any(f'"pid": {pid},' in ln and "PXE: watching" in ln
                               for ln in self.stage_log("pxe").splitlines()), timeout, f"pxe stage {pid} open")

    # --- peers ------------------------------------------------------------------------------------
    def ipmitool(self, index: int, *args: str) -> str:
        b = self.bmc(index)
        r = subprocess.run(["ipmitool", "-I", "lanplus", "-C", "3", "-H", b.host, "-p", str(b.port),
                            "-U", b.user, "-P", b.password, *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"ipmitool {' '.join(args)}: {r.stderr}"
        return r.stdout

    def power_on(self, index: int) -> None:
        self.ipmitool(index, "chassis", "power", "on")

    def ports(self, index: int) -> dict[str, dict]:
        """netconfd's running config of machine ``index``'s port on each leaf."""
        m = self.machine(index)
        out = {}
        for nic in m.nics:
            if nic.switch:
                out[nic.switch] = running_config(self.lab.switches[nic.switch]).ports[nic.port]
        return out

    def all_ports(self) -> dict[str, dict[str, dict]]:
        return {name: running_config(sw).ports for name, sw in self.lab.switches.items()}

    def bmc_events_since(self, index: int, t: float) -> list[str]:
        """events.log entries ("<param> <value>") of BMC ``index`` written after epoch ``t``."""
        path = Path(self.bmc(index).state_dir) / "events.log"
        out = []
        for ln in path.read_text().splitlines() if path.exists() else []:
            ts, _, rest = ln.partition(" ")
            try:
                if float(ts) >= t:
                    out.append(rest)
            except ValueError:
                continue
        return out

    def trace(self, key: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "METAL_CORE_CONFIG": str(self.run_dir / "metalcore.toml"),
               "METAL_CORE_RUN_DIR": str(self.run_dir)}
        return subprocess.run([os.path.join(REPO, ".venv/bin/metalcore"), "trace", key], env=env,
                              capture_output=True, text=True, timeout=60)


def tenant(port: dict) -> bool:
    return port.get("mode") == "tenant" and str(port.get("vrf", "")).startswith("vrf")


def pxe_vlan(port: dict) -> bool:
    return port.get("mode") == "access" and port.get("access-vlan") == PXE_VLAN and not port.get("vrf")


def start_rack(tmp: Path, machines: int = 1, firmware: str = "bios", bmc_only: int = 0,
               ports_per_switch: int | None = None, settings: dict | None = None) -> Rack:
    """Full rack in ``tmp``/run + the five stages under supervisord with the lab's settings."""
    from tests.fixtures_supervisor import free_port_block, start_supervisor

    run_dir = Path(tmp) / "run"
    total = machines + bmc_only
    try:
        lab = up_full(run_dir, machines=machines, firmware=firmware, bmc_only=bmc_only,
                      ports_per_switch=ports_per_switch or max(8, total))
    except MissingPeerBinary as e:
        pytest.fail(f"a peer of the rack lab is missing: {e}")
    try:
        write_settings(lab, Path(tmp) / "lab.toml")
        overrides = {"metrics_server_port": free_port_block(5), **(settings or {})}
        sup = start_supervisor(str(tmp), settings_file=str(Path(tmp) / "lab.toml"), settings=overrides,
                               run_dir=str(run_dir))
    except BaseException:
        down_full(run_dir)
        raise
    api = MetalAPILab(lab.service_info["metal-api"]["url"], lab.service_info["metal-api"]["keys"])
    rack = Rack(Path(tmp), lab, sup, api, machines)
    try:
        rack.wait_running()
        rack.wait_pxe_open()
    except BaseException:
        stop_rack(rack)
        raise
    return rack


def stop_rack(rack: Rack) -> None:
    from tests.fixtures_supervisor import stop_supervisor

    for c in rack.consoles.values():
        c.stop()
    try:
        stop_supervisor(rack.sup)
    finally:
        rack.api.close()
        down_full(rack.run_dir)


def virtual_machines(rack: Rack, indexes: list[int]) -> list[dict]:
    """What a virtual initrd (tests/e2e/virtual_hammer.py) needs to register BMC-only slots."""
    out = []
    for i in indexes:
        m = rack.machine(i)
        out.append({"id": m.id, "macs": [n.mac for n in m.nics], "neighbors": [n.port_mac for n in m.nics],
                    "bmc": {"address": m.bmc.address, "user": m.bmc.user, "password": m.bmc.password,
                            "events": str(Path(rack.bmc(i).state_dir) / "events.log")}})
    return out


class VirtualHammer:
    """tests/e2e/virtual_hammer.py in the rack namespace: the initrd of BMC-only machines."""

    def __init__(self, rack: Rack, indexes: list[int], timeout: float = 600):
        spec = rack.tmp / f"virtual-{indexes[0]}-{indexes[-1]}.json"
        spec.write_text(json.dumps(virtual_machines(rack, indexes)))
        self.log = rack.tmp / f"virtual-{indexes[0]}-{indexes[-1]}.jsonl"
        self._f = open(self.log, "w")
        self.proc = subprocess.Popen(["ip", "netns", "exec", rack.rack_ns, sys.executable,
                                      os.path.join(REPO, "tests/e2e/virtual_hammer.py"), "--core",
                                      rack.core_address, "--timeout", str(timeout), str(spec)],
                                     stdout=self._f, stderr=subprocess.STDOUT, cwd=REPO)

    def steps(self) -> list[dict]:
        out = []
        for ln in self.log.read_text().splitlines():
            try:
                out.append(json.loads(ln))
            except ValueError:
                pass
        return out

    def ids_at(self, step: str) -> set[str]:
        return {s["id"] for s in self.steps() if s["step"] == step}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._f.close()


@pytest.fixture(scope="module")
def rack_factory(tmp_path_factory):
    """start_rack(...) for a module; every rack it made is stopped (stages, VMs, peers) at the end."""
    made: list[Rack] = []

    def make(**kw) -> Rack:
        tmp = tmp_path_factory.mktemp("rack", numbered=True)  # short: ipc:// paths are limited to 107 bytes
        rack = start_rack(tmp, **kw)
        made.append(rack)
        return rack

    yield make
    for rack in made:
        stop_rack(rack)
