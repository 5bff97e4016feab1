"""A real machine (QEMU) lives its whole life in the lab through all five stages under supervisord.

PXE boot through metalcore (the site dnsmasq gives only the address) -> the initrd registers through the
hammer proxy -> the Metal API stand-in allocates it -> install returns -> the initrd reports success -> the
BMC's boot device reads back as disk, finalize reaches the stand-in -> its ports on both leaves are in the
tenant VRF -> the stand-in frees it -> the delete event comes over nsqd -> boot device PXE and a power cycle
(the VM really reboots) -> it PXE boots again into discovery -> its ports are back in the PXE VLAN.

Assertions are on the peers only: netconfd's running config, the BMC's state dir (ipmi_sim's chassis hook),
the stand-in's call log and published events, the VM's serial console. The rack-scale version with 100
BMC-only machines is bench/bench_rack.py; here a smaller one runs.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from metalcore.protocol.pxe_watchdog import booted_since
from tests.fixtures_rack import Rack, VirtualHammer, pxe_vlan, tenant, wait_until

pytestmark = pytest.mark.timeout(900)

BOOT_TIMEOUT = 240      # power on -> initrd waiting, TCG on a shared 2-core machine
SMALL_SCALE = 20        # BMC-only machines in the suite's rack-scale test (bench: 100)
WAITING = r"METALCORE-MARKER waiting"


# --- helpers --------------------------------------------------------------------------------------

def calls(rack: Rack, since: int, contains: str, method: str = "") -> list[dict]:
    return [c for c in rack.api.calls(since) if contains in c["path"] and (not method or c["method"] == method)]


def events_named(rack: Rack, since: int, machine_id: str, event: str) -> list[dict]:
    return [c for c in calls(rack, since, f"/v1/machine/{machine_id}/event", "POST")
            if (c.get("body") or {}).get("event") == event]


def cycles(events: list[str]) -> int:
    """Power cycles in BMC events: an off followed by an on, or a reset."""
    n, off = 0, False
    for e in events:
        if e.startswith("power 0"):
            off = True
        elif e.startswith("power 1") and off:
            n, off = n + 1, False
        elif e.startswith("reset"):
            n += 1
    return n


def pxe_then_one_cycle(events: list[str]) -> bool:
    """The free's BMC commands: boot device PXE (a target state: pyghmi resends a request that ipmi_sim's
    blocking chassis hook answered late, so it may stand twice), then exactly one power cycle."""
    boots = [e for e in events if e.startswith("boot ")]
    return bool(boots) and set(boots) == {"boot pxe"} and cycles(events) == 1


def ports_if(rack: Rack, i: int, pred) -> dict | None:
    """Machine i's ports on both leaves if ``pred`` holds for both, else None."""
    p = rack.ports(i)
    return p if len(p) == 2 and all(pred(x) for x in p.values()) else None


def ensure_waiting(rack: Rack, i: int) -> None:
    """Machine ``i`` runs its initrd and waits for an allocation (powers it on if it is off)."""
    con = rack.console(i)
    if rack.bmc(i).power() == "off" or not con.find(r"METALCORE-MARKER initrd-started"):
        mark = con.mark()
        rack.power_on(i)
        con.wait_for(WAITING, BOOT_TIMEOUT, after=mark)
        return
    last = con.find_all(r"METALCORE-MARKER initrd-started")[-1]
    con.wait_for(WAITING, BOOT_TIMEOUT, after=last.index)


def install(rack: Rack, i: int, since: int, *, disk_marker: bool = True, during=None) -> dict:
    """Allocate machine ``i`` (waiting) and follow it to the tenant VRF; ``during(step)`` injects faults."""
    m, con = rack.machine(i), rack.console(i)
    mark = con.mark()
    t_alloc = time.time()
    rack.api.allocate(m.id)
    if during:
        during("allocated")
    con.wait_for(r"METALCORE-MARKER install-ok", 120, after=mark)
    if during:
        during("install-returned")
    rep = con.wait_for(r"METALCORE-MARKER reported", 120, after=mark)
    assert "code=200" in rep.text, f"the initrd's report failed: {rep.text}"
    # the BMC's boot device reads back as disk, and it was set before the finalize reached the stand-in
    wait_until(lambda: rack.bmc(i).boot_device() == "default", 60, "boot device disk")
    fin = [c for c in calls(rack, since, f"/v1/machine/{m.id}/finalize-allocation") if c["status"] == 200]
    assert len(fin) == 1, f"finalize-allocation reached the stand-in {len(fin)} times: {fin}"
    disk_set = [e for e in rack.bmc_events_since(i, t_alloc) if e.startswith("boot default")]
    assert disk_set, "no 'boot default' (disk) on the BMC after the allocation"
    if during:
        during("finalized")
    ports = wait_until(lambda: ports_if(rack, i, tenant), 120, f"machine {i}'s ports in the tenant VRF on both leaves")
    assert {p["vrf"] for p in ports.values()} == {"vrf3981"}, ports
    # the VM rebooted (initrd's finish) and did not PXE again
    con.wait_for(r"METALCORE-MARKER finish action=reboot", 60, after=mark)
    if disk_marker:
        con.wait_for(r"DISK-BOOT-OK", 120, after=mark)
    assert rack.api.machine(m.id)["allocation"]["succeeded"] is True
    return {"t_alloc": t_alloc, "ports": ports}


def free(rack: Rack, i: int, since: int, during=None) -> dict:
    """Free machine ``i``; follow the delete event to the BMC, the reboot into discovery and the PXE VLAN."""
    m, con = rack.machine(i), rack.console(i)
    mark = con.mark()
    t_free = time.time()
    rack.api.free(m.id)
    if during:
        during("freed")
    wait_until(lambda: [e for e in rack.api.events() if e["message"].get("type") == "delete"
                        and e["message"].get("old") == m.id and e["time"] >= t_free - 1
                        and e.get("delivered_to_nsqd")], 30, "the delete event delivered to nsqd")
    wait_until(lambda: cycles(rack.bmc_events_since(i, t_free)) >= 1, 180, f"a power cycle of machine {i}")
    assert rack.bmc(i).boot_device() == "pxe", rack.bmc_events_since(i, t_free)
    if during:
        during("cycled")
    con.wait_for(r"METALCORE-MARKER initrd-started", BOOT_TIMEOUT, after=mark)
    con.wait_for(WAITING, BOOT_TIMEOUT, after=mark)
    ports = wait_until(lambda: ports_if(rack, i, pxe_vlan), 120, f"machine {i}'s ports back in the PXE VLAN on both leaves")
    assert rack.api.machine(m.id)["allocation"] is None
    return {"t_free": t_free, "bmc": rack.bmc_events_since(i, t_free), "ports": ports}


# --- the rack -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bios_rack(rack_factory) -> Rack:
    return rack_factory(machines=1, firmware="bios", bmc_only=SMALL_SCALE)


def test_bios_machine_life(bios_rack: Rack):
    rack, i = bios_rack, 1
    m = rack.machine(i)
    since = len(rack.api.calls())
    con = rack.console(i)
    mark = con.mark()
    rack.power_on(i)
    con.wait_for(r"^iPXE", BOOT_TIMEOUT, after=mark)
    # the boot script, kernel and initrd came from metalcore: the initrd knows metalcore's address
    line = con.wait_for(r"METALCORE-MARKER machine id=", BOOT_TIMEOUT, after=mark)
    assert f"id={m.id}" in line.text and f"core={rack.core_address}" in line.text, line.text
    con.wait_for(WAITING, BOOT_TIMEOUT, after=mark)
    reg = calls(rack, since, "/v1/machine/register", "POST")
    assert [c["status"] for c in reg] == [201], reg
    assert reg[0]["body"]["uuid"] == m.id and reg[0]["body"]["partitionid"] == "lab"

    got = install(rack, i, since)
    assert cycles(rack.bmc_events_since(i, got["t_alloc"])) == 0, "the BMC cycled the machine during the install"
    out = free(rack, i, since)
    assert pxe_then_one_cycle(out["bmc"]), out["bmc"]
    assert rack.api.violations() == []


def test_trace_shows_every_phase(bios_rack: Rack):
    rack = bios_rack
    ensure_waiting(rack, 1)
    m = rack.machine(1)
    r = rack.trace(m.id)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = r.stdout.split("\nphase ", 1)[-1]
    phases = {ln.split()[0] for ln in summary.splitlines()[1:] if ln.strip()}
    missing = {"DHCP", "boot", "register", "wait", "report", "switch", "BMC"} - phases
    assert not missing, f"metalcore trace {m.id} lacks phases {missing}:\n{r.stdout}"
    by_mac = rack.trace(m.mac)
    assert by_mac.returncode == 0 and "DHCP" in by_mac.stdout


def test_life_with_faults(bios_rack: Rack):
    """Every stage killed -9 at a bad moment, nsqd restarted, netconfd stopped 20 s, the Metal API 5xx
    for 20 s, the BMC unreachable for 20 s, the pxe stage down while the freed machine PXE boots: the
    machine still reaches every end state, once (its disk boot is undone by one more PXE + power cycle)."""
    rack, i = bios_rack, 1
    m = rack.machine(i)
    ensure_waiting(rack, i)
    since = len(rack.api.calls())
    t0 = time.time()
    rack.faults.clear()
    notes: list[dict] = []

    def outage(name: str, start, stop, seconds: float = 20.0) -> None:
        t = time.time()
        start()
        time.sleep(seconds)  # the fault's length is the point here, not a wait for a condition
        stop()
        notes.append({"fault": name, "at": t, "back_after": round(time.time() - t, 1)})

    # 1. hammer proxy killed while the initrd's install long-poll is held, then the Metal API 5xx for 20 s
    rack.kill9("hammer_proxy", "install long-poll held")
    outage("Metal API 503 for 20 s", lambda: rack.api.set_faults(down="503"), rack.api.reset_faults)
    wait_until(lambda: [c for c in calls(rack, since, f"/v1/machine/{m.id}/wait") if c["time"] > notes[-1]["at"]
                        + 20], 60, "the initrd's long-poll back at the stand-in")

    # 2. allocate; netconfd of leaf02 stops (20 s); the ipmi stage dies as the install report comes
    #    (the boot-to-disk job is pending), the switch stage dies as the finalize lands (its reconcile)
    def during_install(step: str) -> None:
        if step == "allocated":
            rack.lab.stop_switch("leaf02")
            notes.append({"fault": "netconfd leaf02 stopped", "at": time.time()})
            wait_until(lambda: events_named(rack, since, m.id, "Installing"), 120, "the Installing event", 0.02)
            rack.kill9("ipmi", "the boot-to-disk job of the install report pending")
            wait_until(lambda: calls(rack, since, "/finalize-allocation"), 120, "finalize", 0.02)
            rack.kill9("switch", "reconcile triggered by report-done")
            left = 20 - (time.time() - notes[-1]["at"])
            if left > 0:
                time.sleep(left)
            rack.lab.start_switch("leaf02")
            notes[-1]["back_after"] = round(time.time() - notes[-1]["at"], 1)

    inst = install(rack, i, since, during=during_install)

    # 3. nsqd restarted; the BMC unreachable for 20 s; free; the nsq consumer killed right after the
    #    delete event; the pxe stage killed and kept down while the machine's PXE ROM asks for a boot file:
    #    the ROM gets no answer and boots the disk. The nsq consumer's PXE boot watchdog must notice (no
    #    discovery event at the Metal API within pxe_boot_watchdog) and cycle the machine into PXE again.
    t = time.time()
    rack.lab.restart_nsq()
    notes.append({"fault": "nsqd restarted", "at": t, "back_after": round(time.time() - t, 1)})
    bmc_down = {"fault": "BMC unreachable (ipmi_sim stopped) 20 s", "at": time.time()}
    rack.lab.stop_bmc(i)
    notes.append(bmc_down)

    pxe_down: list[dict] = []  # the fault record, completed when the stage is back

    def during_free(step: str) -> None:
        if step == "freed":
            rack.kill9("nsq_consumer", "right after the delete event arrived")
            rack.kill9("pxe", "before the machine's PXE boot (offer)")
            pxe_down.append(rack.stop_stage("pxe", "kept down through the machine's PXE boot"))
            left = 20 - (time.time() - bmc_down["at"])
            if left > 0:
                time.sleep(left)
            rack.lab.start_bmc(i)
            bmc_down["back_after"] = round(time.time() - bmc_down["at"], 1)
        elif step == "cycled":
            # the ROM found no ProxyDHCP offer and booted the disk: the tenant's OS would run on the PXE VLAN
            rack.console(i).wait_for(r"DISK-BOOT-OK", BOOT_TIMEOUT, after=free_mark[0])
            rack.start_stage("pxe", pxe_down[0])
            rack.wait_pxe_open(90)

    free_mark = [rack.console(i).mark()]
    out = free(rack, i, since, during=during_free)
    took = time.time() - t0

    # --- nothing lost, nothing harmfully doubled --------------------------------------------------
    api_calls = rack.api.calls(since)
    fin = [c for c in api_calls if "finalize-allocation" in c["path"] and c["status"] == 200]
    bmc_install = rack.bmc_events_since(i, inst["t_alloc"])
    bmc_free = out["bmc"]
    assert len(fin) == 1, fin
    # one cycle for the free, one by the PXE boot watchdog after the disk boot, no more
    assert cycles(bmc_free) == 2, f"the delete event cycled the machine {cycles(bmc_free)} times: {bmc_free}"
    # the boot device is a target state (repeats after redeliveries are harmless), and only ever PXE here
    boots = [e for e in bmc_free if e.startswith("boot ")]
    assert len(boots) >= 2 and set(boots) == {"boot pxe"}, bmc_free
    assert cycles([e for e in bmc_install if e not in bmc_free]) == 0 or cycles(bmc_install) == 1
    assert rack.api.violations() == []
    assert len(rack.faults) == 6, rack.faults
    summary = fault_summary(rack, notes, api_calls, bmc_install, bmc_free, took)
    (rack.tmp / "fault-summary.md").write_text(summary)
    print("\n" + summary)


def fault_summary(rack: Rack, notes, api_calls, bmc_install, bmc_free, took) -> str:
    codes: dict[str, int] = {}
    for c in api_calls:
        key = f"{c['method']} {c['operation']} {c['status']}"
        codes[key] = codes.get(key, 0) + 1
    lines = [f"### Life of one BIOS machine with faults ({took:.0f} s, every end state reached)", "",
             "| fault | moment | back after |", "|---|---|---|"]
    for f in sorted(rack.faults + notes, key=lambda f: f["at"]):
        lines.append(f"| {f['fault']} | {f.get('why', '')} | {f.get('back_after', '?')} s |")
    lines += ["", "BMC commands (events.log) from the allocation to the end of the install: "
              + ", ".join(bmc_install[:len(bmc_install) - len(bmc_free)] or ["-"]),
              "BMC commands after the free: " + ", ".join(bmc_free),
              f"power cycles after the free: {cycles(bmc_free)} (two wanted: the free's, and the PXE boot "
              "watchdog's after the machine booted its disk while the pxe stage was down)", "",
              "| Metal API call (stand-in call log) | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(codes.items()) if "/switch/" not in k]
    sw = sum(v for k, v in codes.items() if "/switch/" in k)
    lines.append(f"| switch register/get/notify (all) | {sw} |")
    return "\n".join(lines) + "\n"


def test_rack_scale_small(bios_rack: Rack):
    """The QEMU machine and SMALL_SCALE BMC-only machines allocated at once, then freed at once."""
    rack = bios_rack
    ensure_waiting(rack, 1)
    virt = list(range(2, 2 + SMALL_SCALE))
    report = rack_scale(rack, qemu=[1], virtual=virt)
    print("\n" + report["text"])


def rack_scale(rack: Rack, qemu: list[int], virtual: list[int], timeout: float = 300) -> dict:
    """Allocate every machine at once, wait until all converge (ports, BMC), free all at once, wait again."""
    since = len(rack.api.calls())
    vh = VirtualHammer(rack, virtual, timeout=timeout * 2)
    try:
        ids = {rack.machine(i).id for i in virtual}
        wait_until(lambda: ids <= vh.ids_at("waiting"), 120, "virtual machines registered and waiting", 0.2)
        every = qemu + virtual
        marks = {i: rack.console(i).mark() for i in qemu}
        t0 = time.time()
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(lambda i: rack.api.allocate(rack.machine(i).id), every))
        t_alloc_sent = time.time() - t0

        def all_tenant() -> bool:
            ports = rack.all_ports()
            return all(tenant(ports[n.switch][n.port]) for i in every for n in rack.machine(i).nics if n.switch)

        wait_until(lambda: ids <= vh.ids_at("reported"), timeout, "every virtual machine reported")
        for i in qemu:
            rack.console(i).wait_for(r"METALCORE-MARKER reported code=200", timeout, after=marks[i])
        wait_until(lambda: all(rack.bmc(i).boot_device() == "default" for i in every), timeout, "boot device disk")
        wait_until(all_tenant, timeout, "every port in the tenant VRF", 1.0)
        t_installed = time.time() - t0
        assert {s["code"] for s in vh.steps() if s["step"] == "reported"} == {200}
        fin = [c for c in calls(rack, since, "/finalize-allocation") if c["status"] == 200]
        assert len(fin) == len(every), f"{len(fin)} finalizes for {len(every)} machines"
        print(f"allocate {len(every)} at once -> every one reported, boot device disk, ports in the tenant VRF: "
              f"{t_installed:.1f} s", flush=True)

        t1 = time.time()
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(lambda i: rack.api.free(rack.machine(i).id), every))

        def all_pxe() -> bool:
            ports = rack.all_ports()
            return all(pxe_vlan(ports[n.switch][n.port]) for i in every for n in rack.machine(i).nics if n.switch)

        wait_until(lambda: all(cycles(rack.bmc_events_since(i, t1)) >= 1 and rack.bmc(i).boot_device() == "pxe"
                               for i in every), timeout, "every BMC: boot device PXE and one power cycle", 1.0)
        wait_until(all_pxe, timeout, "every port back in the PXE VLAN", 1.0)
        t_freed = time.time() - t1

        def in_discovery() -> bool:  # what the PXE boot watchdog waits for, read at the stand-in
            known = {m["id"]: m for m in rack.api.machines()}
            return all(booted_since(known.get(rack.machine(i).id, {}), t1 - 1) for i in every)

        wait_until(in_discovery, BOOT_TIMEOUT, "every machine back in discovery (its Metal API event log)", 1.0)
        t_discovery = time.time() - t1
        for i in qemu:
            rack.console(i).wait_for(WAITING, BOOT_TIMEOUT, after=marks[i])
        doubled = [i for i in every if cycles(rack.bmc_events_since(i, t1)) != 1]
        assert not doubled, f"machines cycled more than once: {doubled}"
        assert rack.api.violations() == []
        text = (f"rack scale: {len(qemu)} QEMU + {len(virtual)} BMC-only machines; allocate (all calls sent in "
                f"{t_alloc_sent:.1f} s) -> every one reported, boot device disk, ports in the tenant VRF: "
                f"{t_installed:.1f} s; free -> every BMC boot PXE + one power cycle, ports in the PXE VLAN: "
                f"{t_freed:.1f} s; every machine back in discovery (Metal API event log), no second cycle: "
                f"{t_discovery:.1f} s")
        return {"installed": t_installed, "freed": t_freed, "discovery": t_discovery, "text": text}
    finally:
        vh.stop()


@pytest.fixture(scope="module")
def uefi_rack(rack_factory) -> Rack:
    return rack_factory(machines=1, firmware="uefi")


def test_uefi_machine_life(uefi_rack: Rack):
    """UEFI (OVMF): the same life as the BIOS machine. OVMF ignores QEMU's -boot order, so the BMC's boot
    device reaches it as bootindex on the NIC and the disk (QEMU's fw_cfg "bootorder", rebuilt on every
    reset; the hook re-indexes a running VM over QMP when the boot device is set). The lab disk has an EFI
    System Partition whose \\EFI\\BOOT\\BOOTX64.EFI prints DISK-BOOT-OK: the initrd's reboot after the
    install boots the disk (no PXE into the initrd again), and the free's boot device PXE + exactly one
    power cycle brings the machine back into discovery."""
    rack, i = uefi_rack, 1
    since = len(rack.api.calls())
    con = rack.console(i)
    mark = con.mark()
    rack.power_on(i)
    line = con.wait_for(r"METALCORE-MARKER machine id=", BOOT_TIMEOUT, after=mark)
    assert f"core={rack.core_address}" in line.text
    con.wait_for(WAITING, BOOT_TIMEOUT, after=mark)
    assert [c["status"] for c in calls(rack, since, "/v1/machine/register", "POST")] == [201]
    got = install(rack, i, since, disk_marker=True)
    # the reboot after the install went to the disk: neither iPXE nor the initrd came up again
    reboot = con.find_all(r"METALCORE-MARKER finish action=reboot")[-1]
    assert con.find(r'BdsDxe: starting Boot\d+ "UEFI Misc Device"', after=reboot.index), "OVMF did not start the disk"
    assert not con.find(r"^iPXE 1\.|Configuring \(net0|METALCORE-MARKER initrd-started", after=reboot.index)
    assert cycles(rack.bmc_events_since(i, got["t_alloc"])) == 0, "the BMC cycled the machine during the install"
    out = free(rack, i, since)
    assert pxe_then_one_cycle(out["bmc"]), out["bmc"]
    assert rack.api.violations() == []
