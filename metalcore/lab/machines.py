"""QEMU machines for the rack lab: real firmware (SeaBIOS or OVMF) + Debian's iPXE NIC ROMs.

Every machine is a QEMU under TCG (``-accel tcg``: the KVM here is nested ``kvm-pvm`` and
triple-faults inside iPXE, pxe-on-this-machine.md gotcha 23) with 256 MB, two virtio-net NICs
on taps in the lab bridge (virtio: DHCP in ms where e1000 costs ~1 s, gotcha 3), and the serial
console appended to ``<dir>/serial.log`` (``append=on``: a restart must not truncate, ipmi-qemu
gotcha 4; ``-machine graphics=off`` so SeaBIOS and iPXE also print there, gotcha 5).  Only the
first NIC carries the iPXE ROM (``romfile=`` on the second), as on a server whose second port
is not set up to PXE.

What the machine knows about itself comes from SMBIOS, not the kernel command line (which is
the same for every machine metal-core boots):

* type 1 uuid = the machine id (``/sys/class/dmi/id/product_uuid``, PXE option 97);
* type 11 OEM strings ``metalcore.bmc=<ip:port>``, ``metalcore.bmc-user``,
  ``metalcore.bmc-password``, ``metalcore.bmc-mac``, ``metalcore.neighbors=<mac>,<mac>``:
  the BMC address and the switch-port MACs the initrd reports (the lab has no LLDP, so these
  stand in for what metal-hammer learns from its neighbours).  Values must not contain spaces
  (the chassis hook word-splits qemu.cmd).

Two ways to run one:

* ``Machine.start()``: QEMU as our child (reference boots, benchmarks), ``stop()`` kills it.
* ``Machine.write_hook_files(statedir)``: qemu.cmd for ``qemu-chassis.sh``, the ipmi_sim
  chassis_control hook, which starts/stops QEMU itself (``-daemonize``) on IPMI power commands
  with the boot order from the boot device set over IPMI; ``kill_hook_vm()`` is the teardown.

The boot device is a ``bootindex`` on the PXE NIC (device id ``pxenic``) and on the disk (``bootdisk``),
set with ``-set device.<id>.bootindex=N`` after the argv (``boot_args``; the hook does the same).  QEMU
turns bootindex into the fw_cfg file "bootorder", which SeaBIOS and OVMF both follow; OVMF ignores
``-boot order`` (measured: it tried the disk first whatever the order), and with both devices indexed
SeaBIOS ignores it too.  fw_cfg rebuilds "bootorder" on every reset, so a bootindex changed at run time
(QMP qom-set, what the hook does when the boot device is set while the VM runs) applies to the next
guest reboot on both firmwares.  The disk (``bootdisk.py``) prints DISK-BOOT-OK on both.

``Console`` tails serial.log, stamps each line with the time it was first seen (50 ms polling)
into ``serial.ts.log`` and lets tests wait for markers with their times.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from metalcore.lab import procs
from metalcore.lab.bootdisk import DISK_MARKER  # noqa: F401  (tests import it from here)
from metalcore.lab.images import ensure_boot_disk
from metalcore.lab.procs import LabError, MissingPeerBinary, ProcRecord

QEMU = "qemu-system-x86_64"
OVMF_CANDIDATES = ("/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd")
IPXE_ROM = "efi-virtio.rom"  # holds both the BIOS and the EFI iPXE
ROM_DIRS = ("/usr/lib/ipxe/qemu", "/usr/share/qemu", "/usr/share/seabios")
HOOK = Path(__file__).resolve().parent / "qemu-chassis.sh"
ANSI = re.compile(r"\x1b\[[0-9;?=]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1bc")  # "=": OVMF's ESC[=3h
NIC_ID, DISK_ID = "pxenic", "bootdisk"   # the device ids qemu-chassis.sh sets bootindex on
NET_BOOT = ("pxe", "n", "network")         # boot devices that put the NIC first (ipmi_sim, QEMU, pyghmi names)


def require_qemu(firmware: str = "bios") -> dict[str, str]:
    """Paths of QEMU, the iPXE ROM and (UEFI) OVMF, or MissingPeerBinary saying what to install."""
    found = {"qemu": procs.require_binary(QEMU, "apt-get install qemu-system-x86")}
    rom = next((f"{d}/{IPXE_ROM}" for d in ROM_DIRS if os.path.exists(f"{d}/{IPXE_ROM}")), None)
    if rom is None:
        raise MissingPeerBinary(f"iPXE ROM {IPXE_ROM} not found in {ROM_DIRS}; "
                                "install it with apt-get install ipxe-qemu")
    found["rom"] = rom
    if firmware == "uefi":
        ovmf = next((p for p in OVMF_CANDIDATES if os.path.exists(p)), None)
        if ovmf is None:
            raise MissingPeerBinary("OVMF.fd not found; install it with apt-get install ovmf")
        found["ovmf"] = ovmf
    elif firmware != "bios":
        raise LabError(f"firmware must be bios or uefi, not {firmware!r}")
    return found


def make_boot_disk(path: Path) -> Path:
    """A copy of the lab disk (bootdisk.py: prints DISK-BOOT-OK under SeaBIOS and OVMF) at ``path``.

    A copy per machine, so that a run without QEMU's snapshot=on can never write into the cache.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ensure_boot_disk(), path)
    return path


def boot_args(boot: str, disk: bool) -> list[str]:
    """QEMU args giving the stored boot device bootindex 1 and the other one 2 (a server's fallback).

    ``boot``: pxe (or n, network) puts the NIC first; anything else (default, disk, cdrom, bios, none)
    the disk, as qemu-chassis.sh does.  ``disk``: the machine has one (else only the NIC is indexed).
    """
    net = 1 if boot in NET_BOOT else 2
    a = ["-set", f"device.{NIC_ID}.bootindex={net}"]
    if disk:
        a += ["-set", f"device.{DISK_ID}.bootindex={3 - net}"]
    return a


def lab_mac(machine: int, nic: int) -> str:
    """The MAC of NIC ``nic`` of machine ``machine`` (QEMU's 52:54:00 prefix)."""
    return f"52:54:00:4c:{machine:02x}:{nic:02x}"


def lab_uuid(tag: str, machine: int) -> str:
    """A readable, per-lab machine id: 000000<machine>-0000-4000-8000-000000<tag>."""
    return f"{machine:08x}-0000-4000-8000-{int(tag, 16):012x}"


@dataclass
class Machine:
    """One lab machine.  ``dir`` holds serial.log, serial.ts.log and (direct mode) qemu.log."""

    index: int
    name: str
    dir: Path
    uuid: str
    macs: list[str]
    taps: list[str]
    machine_ns: str
    firmware: str = "bios"
    memory_mb: int = 256
    disk: Path | None = None
    neighbors: list[str] = field(default_factory=list)
    bmc_address: str = ""
    bmc_user: str = ""
    bmc_password: str = ""
    bmc_mac: str = ""
    proc: ProcRecord | None = None
    console: "Console | None" = None
    hook_dir: Path | None = None

    @property
    def mac(self) -> str:
        """The PXE NIC's MAC (what DHCP and metal-core see first)."""
        return self.macs[0]

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    def qemu_args(self, qmp_sock: Path | None = None) -> list[str]:
        """QEMU argv without a boot order (``boot_args``: the caller or the hook adds it)."""
        paths = require_qemu(self.firmware)
        a = [paths["qemu"], "-name", self.name, "-accel", "tcg", "-m", str(self.memory_mb), "-nodefaults",
             "-display", "none", "-machine", "graphics=off", "-monitor", "none",
             "-chardev", f"file,id=ser0,path={self.serial_log},append=on", "-serial", "chardev:ser0",
             "-smbios", f"type=1,uuid={self.uuid},manufacturer=metalcore-lab,product=qemu-{self.firmware}"]
        oem = {"metalcore.bmc": self.bmc_address, "metalcore.bmc-user": self.bmc_user,
               "metalcore.bmc-password": self.bmc_password, "metalcore.bmc-mac": self.bmc_mac,
               "metalcore.neighbors": ",".join(self.neighbors)}
        values = ["value=" + f"{k}={v}".replace(",", ",,") for k, v in oem.items() if v]
        if values:  # QEMU's option syntax escapes a comma inside a value as ",,"
            a += ["-smbios", "type=11," + ",".join(values)]
        if self.firmware == "uefi":
            a += ["-bios", paths["ovmf"]]
        for i, (tap, mac) in enumerate(zip(self.taps, self.macs)):
            rom = f",id={NIC_ID}" if i == 0 else ",romfile="
            a += ["-netdev", f"tap,id=n{i},ifname={tap},script=no,downscript=no",
                  "-device", f"virtio-net-pci,netdev=n{i},mac={mac}{rom}"]
        if self.disk is not None:
            a += ["-drive", f"file={self.disk},format=raw,if=none,id=disk0,snapshot=on",
                  "-device", f"virtio-blk-pci,drive=disk0,id={DISK_ID}"]
        if qmp_sock is not None:
            a += ["-qmp", f"unix:{qmp_sock},server=on,wait=off"]
        for word in a:
            if any(c.isspace() for c in word):
                raise LabError(f"QEMU argument {word!r} contains whitespace")
        return a

    # --- direct mode --------------------------------------------------------------------------
    def start(self, boot: str = "pxe", no_reboot: bool = False) -> float:
        """Start QEMU as our child in the machine namespace; returns the start time (epoch).

        ``boot``: pxe (NIC first, then the disk) or default/disk (disk first), see ``boot_args``.
        """
        if self.proc is not None and procs.is_running(self.proc):
            raise LabError(f"{self.name} is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ensure_console()
        argv = (["ip", "netns", "exec", self.machine_ns] + self.qemu_args(self.dir / "qmp.sock")
                + boot_args(boot, self.disk is not None))
        if no_reboot:
            argv.append("-no-reboot")
        t0 = time.time()
        self.proc = procs.spawn(f"qemu-{self.name}", argv, cwd=self.dir, log=self.dir / "qemu.log")
        return t0

    def is_running(self) -> bool:
        if self.proc is not None:
            return procs.is_running(self.proc)
        return self.hook_vm_pid() is not None

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, timeout=3.0)
            self.proc = None
        self.kill_hook_vm()

    # --- IPMI (chassis hook) mode ---------------------------------------------------------------
    def write_hook_files(self, statedir: Path, boot: str | None = "pxe") -> Path:
        """Make ``statedir`` a qemu-chassis.sh state dir for this machine; returns the hook path.

        The BMC's lan.conf then needs ``chassis_control "/bin/sh <hook> <statedir>"``.
        ``boot`` (pxe|default|cdrom|bios|none) overwrites the stored boot device; None keeps it.
        """
        statedir.mkdir(parents=True, exist_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ensure_console()
        argv = ["ip", "netns", "exec", self.machine_ns] + self.qemu_args(statedir / "qmp.sock")
        (statedir / "qemu.cmd").write_text(" ".join(argv) + "\n")
        if boot is not None:
            (statedir / "boot").write_text(boot + "\n")
        self.hook_dir = statedir
        return HOOK

    def hook_vm_pid(self) -> int | None:
        """Pid of the QEMU the hook started, if it runs."""
        return hook_vm_pid(self.hook_dir) if self.hook_dir is not None else None

    def kill_hook_vm(self) -> None:
        if self.hook_dir is not None:
            kill_hook_vm(self.hook_dir)

    # --- console ------------------------------------------------------------------------------
    def ensure_console(self) -> "Console":
        if self.console is None:
            self.console = Console(self.serial_log, self.dir / "serial.ts.log").start()
        return self.console

    def close(self) -> None:
        self.stop()
        if self.console is not None:
            self.console.stop()


@dataclass
class ConsoleLine:
    index: int
    time: float     # epoch when the lab first saw the line
    text: str


class Console:
    """Tails a serial log: each complete line gets the time it was first seen.

    The timestamp is the reader's, so it lags the guest's write by at most ``interval`` (50 ms).
    Lines are written to ``ts_log`` as "<epoch> <text>" (ANSI escapes removed).
    """

    def __init__(self, path: Path, ts_log: Path | None = None, interval: float = 0.05):
        self.path, self.ts_log, self.interval = Path(path), ts_log, interval
        self.lines: list[ConsoleLine] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"console-{self.path}", daemon=True)
        self._pos = 0
        self._partial = b""

    def start(self) -> "Console":
        self._pos = self.path.stat().st_size if self.path.exists() else 0
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.poll()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return
        if not data:
            return
        self._pos += len(data)
        now = time.time()
        buf = self._partial + data
        *complete, self._partial = re.split(rb"\r?\n|\r(?!\n)", buf)
        new = []
        for raw in complete:
            text = ANSI.sub("", raw.decode("utf-8", "replace")).strip("\r\x00 ")
            if text:
                new.append(text)
        if not new:
            return
        with self._cond:
            for text in new:
                self.lines.append(ConsoleLine(len(self.lines), now, text))
            self._cond.notify_all()
        if self.ts_log is not None:
            with open(self.ts_log, "a") as f:
                f.writelines(f"{now:.3f} {t}\n" for t in new)

    def mark(self) -> int:
        """Index of the next line: pass it as ``after`` to wait only for later lines."""
        with self._cond:
            return len(self.lines)

    def find(self, pattern: str, after: int = 0) -> ConsoleLine | None:
        rx = re.compile(pattern)
        with self._cond:
            return next((ln for ln in self.lines[after:] if rx.search(ln.text)), None)

    def find_all(self, pattern: str, after: int = 0) -> list[ConsoleLine]:
        rx = re.compile(pattern)
        with self._cond:
            return [ln for ln in self.lines[after:] if rx.search(ln.text)]

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> ConsoleLine:
        """The first line from index ``after`` on matching ``pattern``; LabError after ``timeout``."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        with self._cond:
            while True:
                for ln in self.lines[after:]:
                    if rx.search(ln.text):
                        return ln
                after = max(after, len(self.lines))
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "\n".join(f"  {ln.text}" for ln in self.lines[-12:])
                    raise LabError(f"no console line matching {pattern!r} in {self.path} "
                                   f"within {timeout:.0f}s; last lines:\n{tail}")
                self._cond.wait(min(left, 0.5))


@dataclass
class MachineFactory:
    """Makes the machines of one lab: taps in ``net``, MACs/uuids from the lab's tag."""

    net: "object"  # metalcore.lab.netns.RackNet (not imported: avoids a cycle for type users)
    workdir: Path
    machines: list[Machine] = field(default_factory=list)

    def create(self, firmware: str = "bios", name: str | None = None, nics: int = 2,
               disk: bool | Path = False, neighbors: list[str] | None = None, bmc_address: str = "",
               bmc_user: str = "", bmc_password: str = "", memory_mb: int = 256,
               index: int | None = None, uuid: str | None = None, macs: list[str] | None = None) -> Machine:
        """A new machine with ``nics`` taps in the lab bridge (not started).

        ``index``/``uuid``/``macs``/``neighbors`` default to values derived from the lab's tag
        and the machine's position; RackLab passes its own inventory's values instead.
        ``disk=True`` attaches the lab disk (bootdisk.py), which prints DISK-BOOT-OK on COM1 under
        SeaBIOS (MBR code) and OVMF (\\EFI\\BOOT\\BOOTX64.EFI on an EFI System Partition).
        """
        require_qemu(firmware)
        i = len(self.machines) if index is None else index
        if any(m.index == i for m in self.machines):
            raise LabError(f"machine index {i} exists already")
        name = name or f"m{i}"
        mdir = self.workdir / name
        mdir.mkdir(parents=True, exist_ok=True)
        macs = list(macs) if macs else [lab_mac(i, n) for n in range(nics)]
        taps = [self.net.add_tap(i, n) for n in range(len(macs))]
        if disk is True:
            disk = make_boot_disk(mdir / "disk.raw")
        if neighbors is None:
            # two switch ports per machine: stand-in MACs, one per (switch, port)
            neighbors = [f"02:5c:00:{s:02x}:{i:02x}:01" for s in (1, 2)]
        m = Machine(index=i, name=name, dir=mdir, uuid=uuid or lab_uuid(self.net.tag, i), macs=macs,
                    taps=taps, machine_ns=self.net.machine_ns, firmware=firmware, memory_mb=memory_mb,
                    disk=disk or None, neighbors=list(neighbors), bmc_address=bmc_address,
                    bmc_user=bmc_user, bmc_password=bmc_password)
        self.machines.append(m)
        return m

    def close(self) -> None:
        for m in self.machines:
            m.close()


def hook_vm_pid(statedir: Path) -> int | None:
    """Pid of the QEMU qemu-chassis.sh started for ``statedir``, if it runs (the hook's alive())."""
    statedir = Path(statedir)
    try:
        pid = int((statedir / "qemu.pid").read_text().split()[0])
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    st = procs.proc_stat(pid)
    if st is None or st[0] in ("Z", "X") or str(statedir / "qemu.pid").encode() not in cmd:
        return None
    return pid


def kill_hook_vm(statedir: Path, timeout: float = 3.0) -> None:
    """Stop the hook's QEMU of ``statedir`` (works from any process: the pid is in qemu.pid)."""
    pid = hook_vm_pid(statedir)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while hook_vm_pid(statedir) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        if hook_vm_pid(statedir) is not None:
            os.kill(pid, signal.SIGKILL)
    reap_qemu_orphans()


def reap_qemu_orphans() -> int:
    """Reap zombie QEMUs (daemonized by the hook, orphaned to us as subreaper); returns how many.

    procs.reap_orphans() only collects the comms in procs.PEER_COMMS, which lacks QEMU's.
    """
    me, n = os.getpid(), 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        st = procs.proc_stat(pid)
        if st is None or st[0] != "Z" or st[1] != me:
            continue
        if (procs.proc_comm(pid) or "").startswith(("qemu-system", "ip", "bash", "sh")):
            try:
                os.waitpid(pid, os.WNOHANG)
                n += 1
            except ChildProcessError:
                pass
    return n


def qemu_version() -> str:
    out = subprocess.run([shutil.which(QEMU) or QEMU, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "?"


def _bench(firmwares: list[str]) -> None:
    """Boot machines at once by the reference path; print seconds from QEMU start to each step."""
    import tempfile

    from metalcore.lab.images import ensure_images
    from metalcore.lab.netns import RackNet
    from metalcore.lab.site_dhcp import ReferenceBootServer, SiteDhcp

    procs.enable_subreaper()
    t = time.monotonic()
    imgs = ensure_images()
    print(f"images ready in {time.monotonic() - t:.2f}s")
    work = Path(tempfile.mkdtemp(prefix="mclab-bench-"))
    net = RackNet().up()
    factory = http = dhcp = None
    try:
        http = ReferenceBootServer(net, work / "http", imgs.kernel, imgs.initrd).start()
        dhcp = SiteDhcp(net, work / "dhcp", boot_url=http.boot_url).start()
        factory = MachineFactory(net, work / "m")
        ms = [factory.create(firmware=fw) for fw in firmwares]
        t0 = {m.name: m.start(no_reboot=True) for m in ms}
        for m in ms:
            steps = {}
            for key, rx in (("ipxe", r"^iPXE"), ("dhcp", r"Configuring \(net0.*ok"),
                            ("boot.ipxe", r"METALCORE-REF boot.ipxe"), ("marker", r"METALCORE-MARKER initrd-started")):
                steps[key] = round(m.console.wait_for(rx, 90).time - t0[m.name], 2)
            procs.wait_for(lambda: not m.is_running(), 30, 0.05, "power off")
            steps["off"] = round(time.time() - t0[m.name], 2)
            print(f"{m.name} {m.firmware}: {steps}")
    finally:
        for x in (factory, http, dhcp):
            if x is not None:
                (x.close if x is factory else x.stop)()
        net.down()
        reap_qemu_orphans()


if __name__ == "__main__":  # python -m metalcore.lab.machines bench [bios|uefi ...]
    import sys

    if len(sys.argv) >= 2 and sys.argv[1] == "bench":
        _bench(sys.argv[2:] or ["bios"])
    else:
        sys.exit("usage: python -m metalcore.lab.machines bench [bios|uefi ...]")
