"""RackLab: the whole rack's service peers, with their state in <run_dir>/lab/state.json.

    lab = RackLab(run_dir, bmcs=4).up()      # NSQ, leaf01+leaf02 (netconfd behind sshd), 4 BMCs
    lab.machines[0].bmc.address, lab.switches["leaf01"].port, lab.nsq.nsqd_tcp_address
    lab.down()                               # kills exactly the recorded pids

state.json holds every pid (with its /proc start time), port and path, so ``RackLab.load()``
in another process (``metalcore lab status|down``) can see and stop what ``up`` started.
``up`` on a lab that is already up (all recorded pids alive) adopts it if it has the same
shape and refuses otherwise; a partly dead lab must be brought ``down`` first.

Extra services (the Metal API stand-in, later the QEMU machines) plug in as ``ServiceSpec``s:
started after the peers, recorded under state["services"][name], stopped first by ``down``.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from metalcore.lab import procs
from metalcore.lab.bmcs import DEFAULT_HOOK, Bmc, BmcFarm
from metalcore.lab.nsq import NsqPeer
from metalcore.lab.procs import LabError, ProcRecord
from metalcore.lab.switches import Switch, SwitchLab, port_mac

STATE_VERSION = 1


def machine_id(index: int) -> str:
    """Deterministic, readable machine UUID (what a QEMU machine gets as -uuid)."""
    return f"00000000-0000-4000-8000-{index:012x}"


def machine_mac(index: int, nic: int) -> str:
    """MAC of NIC ``nic`` (0: lan0 -> leaf01, 1: lan1 -> leaf02) of machine ``index`` (QEMU's OUI)."""
    return "52:54:00:%02x:%02x:%02x" % (nic + 1, (index >> 8) & 0xFF, index & 0xFF)


@dataclass
class MachineNic:
    name: str
    mac: str
    switch: str | None  # None when the machine has no port on that switch (more machines than ports)
    port: str | None
    port_mac: str | None


@dataclass
class MachineBmc:
    name: str
    host: str
    port: int
    user: str
    password: str
    state_dir: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Machine:
    """One machine slot of the rack: identity, NICs wired to the leaves, its BMC."""

    index: int
    name: str
    id: str
    mac: str
    nics: list[MachineNic]
    bmc: MachineBmc

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bmc"]["address"] = self.bmc.address
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Machine":
        b = {k: v for k, v in d["bmc"].items() if k != "address"}
        return cls(index=d["index"], name=d["name"], id=d["id"], mac=d["mac"],
                   nics=[MachineNic(**n) for n in d["nics"]], bmc=MachineBmc(**b))


@dataclass
class ServiceSpec:
    """An extra service started by ``RackLab.up`` after the peers.

    ``start(lab)`` returns JSON-able info saved in state["services"][name]; a key "procs" with
    a list of ``ProcRecord.to_dict()`` makes ``down`` stop those pids (also from another process).
    ``stop(lab, info)``, if given, runs first on ``down`` in the process that knows the spec.
    """

    name: str
    start: Callable[["RackLab"], dict]
    stop: Callable[["RackLab", dict], None] | None = None


@dataclass
class RackLab:
    run_dir: Path
    bmcs: int = 4
    ports_per_switch: int = 8
    switch_names: tuple[str, ...] = ("leaf01", "leaf02")
    bmc_user: str = "admin"
    bmc_password: str = "password"
    chassis_hook: str = DEFAULT_HOOK
    bmc_state_init: Callable[[Bmc], None] | None = None
    chassis_hook_of: Callable[[int], str | None] | None = None  # per-BMC hook by index (BmcFarm.hook_of)
    with_nsq: bool = True
    with_switches: bool = True
    services: list[ServiceSpec] = field(default_factory=list)
    nsq_bin_dir: str | None = None
    # Off by default: as a subreaper the calling process (pytest!) inherits every orphan of every
    # test, and other code that polls os.kill(pid, 0) would then wait on zombies nobody reaps.
    subreaper: bool = False

    nsq: NsqPeer | None = field(default=None, init=False)
    switch_lab: SwitchLab | None = field(default=None, init=False)
    bmc_farm: BmcFarm | None = field(default=None, init=False)
    machines: list[Machine] = field(default_factory=list, init=False)
    service_info: dict[str, dict] = field(default_factory=dict, init=False)
    up_seconds: float | None = field(default=None, init=False)

    def __post_init__(self):
        self.run_dir = Path(self.run_dir).resolve()

    # -- paths -----------------------------------------------------------------------------
    @property
    def lab_dir(self) -> Path:
        return self.run_dir / "lab"

    @property
    def state_path(self) -> Path:
        return self.lab_dir / "state.json"

    @property
    def switches(self) -> dict[str, Switch]:
        return self.switch_lab.switches if self.switch_lab else {}

    @property
    def bmc_list(self) -> list[Bmc]:
        return self.bmc_farm.bmcs if self.bmc_farm else []

    def add_service(self, spec: ServiceSpec) -> None:
        """Register an extra service (before ``up``)."""
        self.services.append(spec)

    # -- up ---------------------------------------------------------------------------------
    def up(self) -> "RackLab":
        t0 = time.monotonic()
        if self.state_path.exists():
            if self._adopt_running():
                return self
        if self.subreaper:
            procs.enable_subreaper()
        self.lab_dir.mkdir(parents=True, exist_ok=True)
        self.nsq = NsqPeer(self.lab_dir / "nsq", self.nsq_bin_dir) if self.with_nsq else None
        self.switch_lab = (SwitchLab(self.lab_dir / "switches", tuple(self.switch_names), self.ports_per_switch)
                           if self.with_switches else None)
        self.bmc_farm = BmcFarm(self.lab_dir / "bmcs", self.bmcs, self.bmc_user, self.bmc_password,
                                chassis_hook=self.chassis_hook, state_init=self.bmc_state_init,
                                hook_of=self.chassis_hook_of)
        starters = [p.start for p in (self.nsq, self.switch_lab, self.bmc_farm) if p is not None]
        try:
            with ThreadPoolExecutor(len(starters)) as ex:
                futures = [ex.submit(s) for s in starters]
                errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:
                raise errors[0]
            self.machines = self._inventory()
            self.save()  # peers are recorded before services start, so a failing service still cleans up
            for spec in self.services:
                self.service_info[spec.name] = spec.start(self) or {}
                self.save()
        except BaseException:
            self.down()
            raise
        self.up_seconds = time.monotonic() - t0
        self.save()
        return self

    def _adopt_running(self) -> bool:
        old = RackLab.load(self.run_dir)
        st = old.status()
        if not st["procs"]:
            self.state_path.unlink()
            return False
        alive = [p for p in st["procs"] if p["running"]]
        if not alive:
            self.state_path.unlink()  # stale state of a lab that died: start afresh
            return False
        if len(alive) != len(st["procs"]):
            dead = ", ".join(f'{p["name"]}({p["pid"]})' for p in st["procs"] if not p["running"])
            raise LabError(f"lab in {self.run_dir} is partly up (dead: {dead}); "
                           f"run `metalcore lab down --run-dir {self.run_dir}` first")
        shape = (len(old.bmc_list), old.switch_lab is not None, old.nsq is not None,
                 old.switch_lab.ports_per_switch if old.switch_lab else None)
        want = (self.bmcs, self.with_switches, self.with_nsq,
                self.ports_per_switch if self.with_switches else None)
        if shape != want:
            raise LabError(f"a lab with another shape is already up in {self.run_dir} "
                           f"(bmcs, switches, nsq, ports_per_switch = {shape}, wanted {want}); "
                           "run `metalcore lab down` first")
        for k in ("nsq", "switch_lab", "bmc_farm", "machines", "service_info", "up_seconds"):
            setattr(self, k, getattr(old, k))
        return True

    def _inventory(self) -> list[Machine]:
        machines = []
        leaves = list(self.switches.values())
        for b in self.bmc_list:
            i = b.index
            nics = []
            for j in range(max(2, len(leaves))):
                sw = leaves[j] if j < len(leaves) else None
                has_port = sw is not None and i <= self.ports_per_switch
                nics.append(MachineNic(name=f"lan{j}", mac=machine_mac(i, j),
                                       switch=sw.name if has_port else None,
                                       port=f"swp{i}" if has_port else None,
                                       port_mac=port_mac(sw.index, i) if has_port else None))
            machines.append(Machine(index=i, name=f"machine{i:03d}", id=machine_id(i), mac=nics[0].mac,
                                    nics=nics, bmc=MachineBmc(name=b.name, host=b.host, port=b.port,
                                                              user=b.user, password=b.password,
                                                              state_dir=b.state_dir)))
        return machines

    # -- state ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "run_dir": str(self.run_dir),
            "owner_pid": os.getpid(),
            "saved_at": time.time(),
            "up_seconds": self.up_seconds,
            "nsq": self.nsq.to_dict() if self.nsq else None,
            "switches": self.switch_lab.to_dict() if self.switch_lab else None,
            "bmcs": self.bmc_farm.to_dict() if self.bmc_farm else None,
            "machines": [m.to_dict() for m in self.machines],
            "services": self.service_info,
        }

    def save(self) -> None:
        """Write state.json atomically (call after any restart: pids change)."""
        self.lab_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, self.state_path)

    @classmethod
    def load(cls, run_dir: str | Path) -> "RackLab":
        """The lab recorded in ``run_dir`` (LabError if there is none)."""
        path = Path(run_dir).resolve() / "lab" / "state.json"
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab recorded in {run_dir} (no {path})") from None
        lab = cls(run_dir=Path(d["run_dir"]), subreaper=False)
        lab.nsq = NsqPeer.from_dict(d["nsq"]) if d.get("nsq") else None
        lab.switch_lab = SwitchLab.from_dict(d["switches"]) if d.get("switches") else None
        lab.bmc_farm = BmcFarm.from_dict(d["bmcs"]) if d.get("bmcs") else None
        lab.with_nsq, lab.with_switches = lab.nsq is not None, lab.switch_lab is not None
        lab.bmcs = len(lab.bmc_list)
        if lab.switch_lab:
            lab.ports_per_switch = lab.switch_lab.ports_per_switch
            lab.switch_names = tuple(lab.switch_lab.names)
        if lab.bmc_farm:
            lab.chassis_hook = lab.bmc_farm.chassis_hook
        lab.machines = [Machine.from_dict(m) for m in d.get("machines", [])]
        lab.service_info = d.get("services", {})
        lab.up_seconds = d.get("up_seconds")
        return lab

    # -- status / down ---------------------------------------------------------------------
    def all_procs(self) -> list[ProcRecord]:
        """Every recorded process: services first (they may use the peers), then the peers."""
        out = []
        for info in self.service_info.values():
            out += [ProcRecord.from_dict(p) for p in info.get("procs", [])]
        if self.bmc_farm:
            out += self.bmc_farm.all_procs()
        if self.switch_lab:
            out += self.switch_lab.all_procs()
        if self.nsq:
            out += list(self.nsq.procs.values())
        return out

    def status(self) -> dict:
        ps = [{"name": r.name, "pid": r.pid, "running": procs.is_running(r)} for r in self.all_procs()]
        return {
            "run_dir": str(self.run_dir),
            "up": bool(ps) and all(p["running"] for p in ps),
            "procs": ps,
            "nsq": ({"nsqd_tcp": self.nsq.nsqd_tcp_address, "nsqd_http": self.nsq.nsqd_http_address,
                     "lookupd_http": self.nsq.lookupd_http_address} if self.nsq else None),
            "switches": {n: f"{s.host}:{s.port}" for n, s in self.switches.items()},
            "bmcs": len(self.bmc_list),
            "services": sorted(self.service_info),
        }

    def down(self) -> list[int]:
        """Stop every recorded process; returns pids that would not die (normally none)."""
        for spec in reversed(self.services):
            info = self.service_info.get(spec.name)
            if info is not None and spec.stop:
                try:
                    spec.stop(self, info)
                except Exception:  # noqa: BLE001 - keep tearing down the rest
                    pass
        left = procs.stop_many(self.all_procs())
        procs.reap_orphans()
        if self.switch_lab and not left:
            self.switch_lab.cleanup()
        if not left:
            self.state_path.unlink(missing_ok=True)
        return [r.pid for r in left]

    # -- faults (each saves the new pids) --------------------------------------------------
    def restart_nsq(self, which: tuple[str, ...] = ("nsqd",)) -> None:
        self.nsq.restart(which)
        self.save()

    def stop_switch(self, name: str) -> None:
        self.switch_lab.stop_switch(name)

    def start_switch(self, name: str) -> None:
        self.switch_lab.start_switch(name)
        self.save()

    def stop_bmc(self, key: int | str) -> None:
        self.bmc_farm.stop_bmc(key)

    def start_bmc(self, key: int | str) -> None:
        self.bmc_farm.start_bmc(key)
        self.save()

    def machine(self, key: int | str) -> Machine:
        """A machine by 1-based index, name or id."""
        if isinstance(key, int):
            return self.machines[key - 1]
        return next(m for m in self.machines if key in (m.name, m.id))

    def bmc_of(self, machine: Machine | int | str) -> Bmc:
        m = machine if isinstance(machine, Machine) else self.machine(machine)
        return self.bmc_farm.bmc(m.index)
