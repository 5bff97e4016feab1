"""The rack lab's PXE network and QEMU machines, against real peers only.

* reference boot: dnsmasq's own PXE answer + plain HTTP -> iPXE -> the lab kernel + initrd, on a
  BIOS (SeaBIOS) and a UEFI (OVMF) machine at once, to the initrd's first marker;
* IPMI over the LAN (pyghmi -> ipmi_sim -> qemu-chassis.sh) really power-cycles a machine, and
  the boot device set over IPMI decides whether the next boot PXE-boots or boots the disk, on
  SeaBIOS and on OVMF (bootindex -> fw_cfg bootorder; the disk's EFI System Partition);
* the initrd's small metal-hammer speaks metal-core's HTTP API (a stub metal-core in the rack
  namespace records what it sends).

Each boot to the first marker is ~7-12 s under TCG; the whole module takes about a minute.
"""
from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest
from pyghmi.ipmi import command as ipmi_command

from metalcore.lab import procs
from metalcore.lab.machines import DISK_MARKER

pytestmark = pytest.mark.timeout(240)

FIRST = "METALCORE-MARKER initrd-started"
PXE_SIGNS = r"Booting from ROM|iPXE initialising devices|Configuring \(net0|" + FIRST
# OVMF: the iPXE EFI driver's banner, iPXE's DHCP, EDK2's own PXE
UEFI_PXE_SIGNS = r"^iPXE 1\.|Configuring \(net0|UEFI PXEv4|Start PXE over|" + FIRST


def test_reference_boot_bios_and_uefi_at_once(reference_pxe, machine_factory):
    reference_pxe.http.set_cmdline("")  # no METAL_CORE_ADDRESS: first marker, then power off
    bios = machine_factory.create(firmware="bios")
    uefi = machine_factory.create(firmware="uefi")
    t0 = {m.name: m.start(no_reboot=True) for m in (bios, uefi)}

    took = {}
    for m in (bios, uefi):
        line = m.console.wait_for(FIRST, 60)
        took[m.firmware] = line.time - t0[m.name]
    print(f"first marker after QEMU start (two at once): {took}")
    for m in (bios, uefi):
        procs.wait_for(lambda: not m.is_running(), 20, 0.05, f"{m.name} to power off")
        assert m.console.find("METALCORE-MARKER finish action=poweroff")
        # the firmware fetched what the reference path serves
        assert m.console.find(r"http://\S+/boot\.ipxe\.\.\. ok")
        assert m.console.find(rf"METALCORE-REF boot.ipxe mac {m.mac}")

    leases = reference_pxe.dhcp.leases()
    assert bios.mac in leases and uefi.mac in leases
    paths = [r[3] for r in reference_pxe.http.requests() if r[1] == "GET-END"]
    assert paths.count("/vmlinuz") >= 2 and paths.count("/initrd.img") >= 2
    assert uefi.console.find("platform efi") and bios.console.find("platform pcbios")


def test_ipmi_cycle_and_boot_device_drive_the_vm(reference_pxe, machine_factory, qemu_bmcs):
    reference_pxe.http.set_cmdline("METALCORE_LAB_AFTER=wait")  # stay up after the first marker
    try:
        m = machine_factory.create(firmware="bios", disk=True)
        bmc = qemu_bmcs([m], boot="default").bmcs[0]
        con = m.ensure_console()
        c = ipmi_command.Command(bmc=bmc.host, userid=bmc.user, password=bmc.password, port=bmc.port)
        assert c.get_power()["powerstate"] == "off"

        # 1. boot device PXE over IPMI, power on: the machine PXE-boots
        c.set_bootdev("network")
        assert bmc.boot_device() == "pxe"
        c.set_power("on", wait=False)
        con.wait_for(FIRST, 60)
        assert c.get_power()["powerstate"] == "on"
        boots = len(con.find_all(r"^SeaBIOS \(version"))
        assert boots == 1

        # 2. boot device disk, power cycle over the LAN: a second boot, from the disk, no PXE
        c.set_bootdev("hd")
        assert bmc.boot_device() == "default"
        mark, discovers = con.mark(), reference_pxe.dhcp.discovers(m.mac)
        c.raw_command(netfn=0x00, command=0x02, data=[0x02])  # Chassis Control: power cycle
        con.wait_for(r"^SeaBIOS \(version", 20, after=mark)
        con.wait_for(DISK_MARKER, 20, after=mark)
        time.sleep(0.5)
        assert not con.find(PXE_SIGNS, after=mark), "disk boot went to the network"
        assert reference_pxe.dhcp.discovers(m.mac) == discovers

        # 3. boot device PXE again, power cycle: PXE again
        c.set_bootdev("network")
        mark = con.mark()
        c.raw_command(netfn=0x00, command=0x02, data=[0x02])
        con.wait_for(r"Booting from ROM", 20, after=mark)
        con.wait_for(FIRST, 60, after=mark)
        assert not con.find(DISK_MARKER, after=mark)
        assert len(con.find_all(r"^SeaBIOS \(version")) == 3
        ev = bmc.events()
        assert ev.index("boot pxe") < ev.index("power 1") < ev.index("boot default")
        assert ev.count("power 0") >= 2  # each cycle: off, then on after ipmi_sim's 1 s timer
    finally:
        reference_pxe.http.set_cmdline("")


def qmp(sock: Path, *commands: dict) -> list[dict]:
    """Send QMP commands to the VM's monitor (the hook's qmp.sock); the answers."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock))
        f = s.makefile("rwb")
        f.readline()  # greeting
        out = []
        for c in ({"execute": "qmp_capabilities"},) + commands:
            f.write(json.dumps(c).encode() + b"\n")
            f.flush()
            while "return" not in (r := json.loads(f.readline())) and "error" not in r:
                pass  # an event
            out.append(r)
        return out[1:]


def test_uefi_boot_device_over_ipmi(reference_pxe, machine_factory, qemu_bmcs):
    """OVMF follows the BMC's boot device: disk -> the ESP's BOOTX64.EFI prints DISK-BOOT-OK, no PXE;
    PXE + power cycle -> iPXE; disk set while the VM runs + a warm reset (what a guest reboot does)
    -> the disk again, from the bootindex the hook re-set over QMP."""
    m = machine_factory.create(firmware="uefi", disk=True)
    bmc = qemu_bmcs([m], boot="default").bmcs[0]
    con = m.ensure_console()
    c = ipmi_command.Command(bmc=bmc.host, userid=bmc.user, password=bmc.password, port=bmc.port)

    # 1. boot device disk, power on: OVMF boots the disk's EFI loader, the NIC is never tried
    t0 = time.time()
    c.set_power("on", wait=False)
    line = con.wait_for(DISK_MARKER, 90)
    assert con.find(r'BdsDxe: starting Boot\d+ "UEFI Misc Device"'), "OVMF did not start the disk"
    assert not con.find(UEFI_PXE_SIGNS), "disk boot went to the network"
    assert reference_pxe.dhcp.discovers(m.mac) == 0
    took = {"disk (power on)": line.time - t0}

    # 2. boot device PXE, power cycle (QEMU restarts): iPXE gets an address from the site DHCP
    c.set_bootdev("network")
    assert bmc.boot_device() == "pxe"
    mark, t0 = con.mark(), time.time()
    c.raw_command(netfn=0x00, command=0x02, data=[0x02])  # Chassis Control: power cycle
    took["iPXE (cycle)"] = con.wait_for(r"^iPXE 1\.", 90, after=mark).time - t0
    con.wait_for(r"Configuring \(net0.*ok", 90, after=mark)
    assert reference_pxe.dhcp.discovers(m.mac) >= 1
    assert not con.find(DISK_MARKER, after=mark)

    # 3. boot device disk while the VM runs, then a warm reset in the same QEMU: the disk
    c.set_bootdev("hd")
    assert bmc.boot_device() == "default"
    pid = m.hook_vm_pid()
    mark, t0 = con.mark(), time.time()
    assert "error" not in qmp(Path(bmc.state_dir) / "qmp.sock", {"execute": "system_reset"})[0]
    took["disk (warm reset)"] = con.wait_for(DISK_MARKER, 90, after=mark).time - t0
    assert m.hook_vm_pid() == pid, "the VM was restarted, not reset"
    assert not con.find(r"^iPXE 1\.|Configuring \(net0|" + FIRST, after=mark)
    print(f"UEFI boot device over IPMI, seconds: { {k: round(v, 1) for k, v in took.items()} }")
    ev = bmc.events()
    assert ev.index("power 1") < ev.index("boot pxe") < ev.index("boot default")


STUB_CORE = r'''
import json, sys, time, http.server
log, installs = open(sys.argv[3], "a"), {"n": 0}
class H(http.server.BaseHTTPRequestHandler):
    def _answer(self, code, body=b""):
        self.send_response(code); self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/json"); self.end_headers(); self.wfile.write(body)
    def _log(self, body):
        log.write(json.dumps({"t": time.time(), "method": self.command, "path": self.path,
                              "body": json.loads(body) if body else None}) + "\n"); log.flush()
    def do_POST(self):
        self._log(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
        self._answer(200, b"{}")
    def do_GET(self):
        self._log("")
        installs["n"] += 1
        if installs["n"] <= 2:
            return self._answer(304)
        self._answer(200, json.dumps({"allocation": {"image": {"id": "debian-12"}}}).encode())
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
print("READY", flush=True)
srv.serve_forever()
'''


def test_initrd_speaks_metal_core_api(reference_pxe, machine_factory, tmp_path):
    net = reference_pxe.net
    script, reqlog = tmp_path / "stub_core.py", tmp_path / "requests.jsonl"
    script.write_text(STUB_CORE)
    stub = procs.spawn("stub-core", net.exec_prefix() + [sys.executable, str(script), net.rack_ip, "4242",
                                                          str(reqlog)], tmp_path, tmp_path / "stub.log")
    try:
        procs.wait_for(lambda: "READY" in Path(stub.log).read_text(), 10, what="stub metal-core")
        reference_pxe.http.set_cmdline(f"METAL_CORE_ADDRESS={net.rack_ip}:4242 METAL_API_URL=http://api "
                                       "METALCORE_LAB_AFTER=poweroff")
        m = machine_factory.create(firmware="bios", bmc_address="127.0.0.1:6230", bmc_user="admin",
                                   bmc_password="lab-secret",
                                   neighbors=["02:5c:00:01:00:05", "02:5c:00:02:00:05"])
        t0 = m.start(no_reboot=True)
        for step in ("initrd-started", "dhcp-ok", "registered", "install-ok image=debian-12", "reported code=200"):
            m.console.wait_for(f"METALCORE-MARKER {step}", 60)
        procs.wait_for(lambda: not m.is_running(), 20, 0.05, "power off after the report")
        print(f"initrd: start to reported {m.console.find('reported').time - t0:.1f}s")
    finally:
        reference_pxe.http.set_cmdline("")
        procs.stop(stub)

    reqs = [json.loads(line) for line in reqlog.read_text().splitlines()]
    calls = [(r["method"], r["path"]) for r in reqs]
    mid = m.uuid
    assert calls[0] == ("POST", f"/machine/{mid}/event")
    assert ("POST", f"/machine/register/{mid}") in calls
    assert calls.count(("GET", f"/machine/install/{mid}")) == 3  # 304, 304 (retried at once), 200
    assert calls[-1] == ("POST", f"/machine/report/{mid}")
    events = [r["body"]["event"] for r in reqs if r["path"].endswith("/event")]
    assert events == ["Preparing", "Registering", "Waiting", "Installing"]
    reg = next(r["body"] for r in reqs if "/register/" in r["path"])
    assert reg["uuid"] == mid and reg["cpu_cores"] >= 1 and reg["memory"] > 200 * 2**20
    assert [n["mac"] for n in reg["nics"]] == m.macs
    assert [nb["mac"] for n in reg["nics"] for nb in n["neighbors"]] == m.neighbors
    assert reg["ipmi"]["address"] == "127.0.0.1:6230" and reg["ipmi"]["user"] == "admin"
    assert reg["ipmi"]["password"] == "lab-secret"
    assert reqs[-1]["body"]["success"] is True
    assert "lab-secret" not in m.serial_log.read_text(errors="replace")
