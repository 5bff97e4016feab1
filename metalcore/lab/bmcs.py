"""BMCs: one ipmi_sim (Debian openipmi) per machine, lanplus on its own UDP port on loopback.

Each BMC has a state dir (``<root>/<name>/``) where the chassis_control hook keeps the power
state, boot device and identify setting in files, plus events.log; tests read those back
because pyghmi's get_bootdev() lies against ipmi_sim (ipmi_sim gotcha 1).  ``touch
<state_dir>/fail`` makes every chassis call fail.  The hook is a parameter (``chassis_hook``, a
command string; the state dir is appended, then ipmi_sim appends "get power" etc.) so the
QEMU lab can pass one that drives real VMs.

Readiness is a session-less UDP probe (Get Channel Authentication Capabilities, what ipmitool
sends first), many BMCs at once from one socket: no pyghmi session is created in the caller,
so its session cache is not polluted (ipmi_sim gotcha 7).

Restarting a BMC (``stop_bmc`` + ``start_bmc``) keeps its port and state dir.  A pyghmi Command
that was logged in before the restart recovers only after ~18-20 s (its session times out and it
logs in again); a new Command in the same process can take ~68 s.  Fault tests should use a
fresh process (or budget that time).
"""
from __future__ import annotations

import select
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from metalcore.lab import procs
from metalcore.lab.ports import HOST, free_udp_ports, udp_port_free
from metalcore.lab.procs import LabError, ProcRecord

HOOK = Path(__file__).resolve().parent / "chassis_hook.sh"
# ipmi_sim popens the hook for every chassis request (two per power event with its read-back): busybox's
# static ash starts cheaper than dash and has $EPOCHREALTIME, so the hook forks nothing else (dash would need
# `date`). Child CPU per call here: 3.1-3.3 ms with the old cat/date hook under dash, 1.6-1.9 ms now.
_BUSYBOX = shutil.which("busybox")
DEFAULT_HOOK = f"{_BUSYBOX} sh {HOOK}" if _BUSYBOX else f"/bin/sh {HOOK}"
INSTALL_HINT = "scripts/install-system-packages (Debian package openipmi)"

# One BMC at IPMB 0x20 with a SEL; nothing else (no sensors): all the lab needs.
EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
"""

LAN_CONF = """name "{name}"
set_working_mc 0x20
  startlan 1
    addr {host} {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid {guid}
  endlan
  chassis_control "{hook} {state_dir}"
  user 1 true  ""      "test"     user  10 none md2 md5 straight
  user 2 true  "{user}" "{password}" admin 10 none md2 md5 straight
"""


def _probe_packet() -> bytes:
    """RMCP + IPMI 1.5 session-less Get Channel Authentication Capabilities (channel E, v2 data)."""
    body = [0x81, 0x00, 0x38, 0x8E, 0x04]  # rqAddr, rqSeq/LUN, cmd, channel|0x80, priv admin
    msg = [0x20, 0x06 << 2, (-(0x20 + (0x06 << 2))) & 0xFF] + body + [(-sum(body)) & 0xFF]
    rmcp = [0x06, 0x00, 0xFF, 0x07]
    session = [0x00, 0, 0, 0, 0, 0, 0, 0, 0, len(msg)]
    return bytes(rmcp + session + msg)


PROBE = _probe_packet()


def probe(host: str, ports: list[int], timeout: float, interval: float = 0.05) -> set[int]:
    """Ports among ``ports`` that answered the UDP probe within ``timeout`` seconds."""
    pending, answered = set(ports), set()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    try:
        s.bind((host, 0))
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for p in pending:
                try:
                    s.sendto(PROBE, (host, p))
                except OSError:
                    pass  # ICMP port unreachable surfaces here as ECONNREFUSED: not up yet
            until = min(deadline, time.monotonic() + interval)
            while pending:
                left = until - time.monotonic()
                if left <= 0 or not select.select([s], [], [], left)[0]:
                    break
                try:
                    _data, (_h, p) = s.recvfrom(512)
                except OSError:
                    continue
                if p in pending:
                    pending.discard(p)
                    answered.add(p)
        return answered
    finally:
        s.close()


@dataclass
class Bmc:
    """One simulated BMC; ``state_dir`` holds power/boot/identify/events.log/fail."""

    index: int
    name: str
    host: str
    port: int
    user: str
    password: str
    state_dir: str
    proc: ProcRecord | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _read(self, f: str, default: str = "") -> str:
        try:
            return (Path(self.state_dir) / f).read_text().strip()
        except FileNotFoundError:
            return default

    def power(self) -> str:
        """'on' or 'off', from the hook's state file."""
        return "on" if self._read("power", "0") == "1" else "off"

    def boot_device(self) -> str:
        """ipmi_sim's name of the boot device: none, pxe, default (disk), cdrom, bios."""
        return self._read("boot", "default")

    def identify(self) -> str:
        return self._read("identify")

    def events(self) -> list[str]:
        """events.log lines without the timestamp, e.g. ['power 1', 'boot pxe']."""
        return [ln.split(" ", 1)[1] for ln in self._read("events.log").splitlines() if " " in ln]

    def inject_failure(self, on: bool = True) -> None:
        f = Path(self.state_dir) / "fail"
        if on:
            f.touch()
        else:
            f.unlink(missing_ok=True)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["proc"] = self.proc.to_dict() if self.proc else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Bmc":
        d = dict(d)
        d["proc"] = ProcRecord.from_dict(d["proc"]) if d.get("proc") else None
        return cls(**d)


@dataclass
class BmcFarm:
    """``count`` ipmi_sim BMCs under ``root``."""

    root: Path
    count: int = 4
    user: str = "admin"
    password: str = "password"
    host: str = HOST
    chassis_hook: str = DEFAULT_HOOK
    names: list[str] | None = None
    state_init: Callable[[Bmc], None] | None = None
    # per-BMC hook (1-based index -> command string), e.g. QEMU machines and BMC-only slots in one rack;
    # None or a None answer: ``chassis_hook``. lan.conf keeps it, so a restarted BMC keeps its hook.
    hook_of: Callable[[int], str | None] | None = None
    bmcs: list[Bmc] = field(default_factory=list)

    def __post_init__(self):
        self.root = Path(self.root)

    def start(self, timeout: float = 20.0) -> None:
        ipmi_sim = procs.require_binary("ipmi_sim", INSTALL_HINT)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "bmc.emu").write_text(EMU)
        names = self.names or [f"bmc{i:03d}" for i in range(1, self.count + 1)]
        ports = free_udp_ports(self.count, self.host)
        self.bmcs = []
        for i, (name, port) in enumerate(zip(names, ports), start=1):
            sd = self.root / name
            (sd / "persist").mkdir(parents=True, exist_ok=True)
            b = Bmc(index=i, name=name, host=self.host, port=port, user=self.user,
                    password=self.password, state_dir=str(sd))
            (sd / "lan.conf").write_text(LAN_CONF.format(
                name=name, host=self.host, port=port, guid="%032x" % (0xA1230000 + i),
                hook=(self.hook_of(i) if self.hook_of else None) or self.chassis_hook, state_dir=sd, user=self.user, password=self.password))
            (sd / "power").write_text("0\n")
            (sd / "boot").write_text("default\n")
            if self.state_init:
                self.state_init(b)
            self.bmcs.append(b)
        for b in self.bmcs:
            self._spawn(b, ipmi_sim)
        self._wait_ready(self.bmcs, timeout)

    def _spawn(self, b: Bmc, ipmi_sim: str | None = None) -> None:
        ipmi_sim = ipmi_sim or procs.require_binary("ipmi_sim", INSTALL_HINT)
        sd = Path(b.state_dir)
        b.proc = procs.spawn(f"ipmi_sim-{b.name}",
                             [ipmi_sim, "-c", "lan.conf", "-f", str(self.root / "bmc.emu"), "-s", "persist", "-n"],
                             sd, sd / "ipmi_sim.log")

    def _wait_ready(self, bmcs: list[Bmc], timeout: float) -> None:
        by_port = {b.port: b for b in bmcs}
        answered = probe(self.host, list(by_port), timeout)
        missing = [b for p, b in by_port.items() if p not in answered]
        if missing:
            b = missing[0]
            dead = "exited" if not procs.is_running(b.proc) else "running but silent"
            raise LabError(f"{len(missing)} of {len(bmcs)} BMCs did not answer within {timeout:.0f}s "
                           f"(first: {b.name} on {b.address}, {dead}):\n"
                           f"{procs.log_tail(Path(b.state_dir) / 'ipmi_sim.log')}")

    def bmc(self, key: int | str) -> Bmc:
        """A BMC by 1-based index or by name."""
        if isinstance(key, int):
            return self.bmcs[key - 1]
        return next(b for b in self.bmcs if b.name == key)

    def stop_bmc(self, key: int | str) -> None:
        """Stop one BMC (UDP port goes silent: 'BMC unreachable')."""
        b = self.bmc(key)
        if b.proc:
            procs.stop(b.proc)

    def start_bmc(self, key: int | str, timeout: float = 10.0) -> None:
        """Start a stopped BMC again on the same port with the same state dir."""
        b = self.bmc(key)
        if b.proc and procs.is_running(b.proc):
            return
        procs.wait_for(lambda: udp_port_free(b.port, self.host), 5.0, what=f"UDP port {b.port} to be free")
        self._spawn(b)
        self._wait_ready([b], timeout)

    def all_procs(self) -> list[ProcRecord]:
        return [b.proc for b in self.bmcs if b.proc]

    def stop(self) -> None:
        procs.stop_many(self.all_procs())

    def to_dict(self) -> dict:
        return {"root": str(self.root), "count": self.count, "user": self.user, "host": self.host,
                "chassis_hook": self.chassis_hook, "bmcs": [b.to_dict() for b in self.bmcs]}

    @classmethod
    def from_dict(cls, d: dict) -> "BmcFarm":
        f = cls(root=Path(d["root"]), count=d["count"], user=d["user"], host=d["host"],
                chassis_hook=d["chassis_hook"])
        f.bmcs = [Bmc.from_dict(b) for b in d["bmcs"]]
        if f.bmcs:
            f.password = f.bmcs[0].password
        return f
