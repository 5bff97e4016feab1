"""The PXE boot watchdog with real peers: nsqd + nsqlookupd, ipmi_sim BMCs, the Metal API stand-in, the
nsq_consumer and ipmi stages as processes. A freed machine is "seen PXE booting" when its Metal API event
log gets a discovery event (in the rack: the pxe stage's "PXE Booting"; here the test writes it, as the
machine is a BMC only). Asserted on the BMCs' own event logs and the bus."""

from __future__ import annotations

import tempfile
import time

import pytest

from tests.integration.nsq_ipmi_rig import Rig, machine_id, wait_for

pytestmark = pytest.mark.timeout(180)
WINDOW = 4.0


@pytest.fixture(scope="module")
def rig():
    r = Rig(tempfile.mkdtemp(prefix="pxewd-", dir="/tmp"), bmcs=4, pxe_boot_watchdog=f"{WINDOW}s",
            pxe_boot_watchdog_cycles=1).up()
    r.start_stage("ipmi")
    r.start_stage("nsq_consumer")
    yield r
    r.down()


def cycles(events: list[str]) -> int:
    """Boots the BMC started: ipmi_sim's chassis cycle writes "power 0" then "power 1", and a cycle of a
    chassis that is off only "power 1"."""
    return events.count("power 1")


def boots_into_discovery(rig: Rig, index: int, event: str = "PXE Booting") -> None:
    """What the rack's pxe stage reports when the machine's PXE ROM asks it for a boot file."""
    rig.api.state.store.add_event(machine_id(index), {"event": event, "message": "test"})


def test_a_machine_that_pxe_boots_is_finished_after_one_cycle(rig):
    mid, bmc = machine_id(1), rig.farm.bmc(1)
    n = len(bmc.events())
    rig.publish({"type": "delete", "old": mid})
    wait_for(lambda: cycles(bmc.events()[n:]) == 1, 20, "the free's power cycle")
    boots_into_discovery(rig, 1)
    booted = rig.wait_event("pxe-booted", lambda e: e.machine_id == mid, 10)
    assert booted.body["extra_cycles"] == 0
    done = rig.wait_event("done", lambda e: e.machine_id == mid and e.body["event"] == "delete", 10)
    assert done.body["actions"][-1] == "power cycle", done.body
    time.sleep(WINDOW + 1)  # past the window: nothing more happens to a machine that booted
    assert cycles(bmc.events()[n:]) == 1 and bmc.boot_device() == "pxe", bmc.events()[n:]


def test_a_machine_that_boots_its_disk_is_cycled_again(rig):
    mid, bmc = machine_id(2), rig.farm.bmc(2)
    n = len(bmc.events())
    t = time.monotonic()
    rig.publish({"type": "delete", "old": mid})
    # no discovery event: its PXE ROM got no answer (the pxe stage was restarting) and it booted its disk
    again = rig.wait_event("pxe-watchdog", lambda e: e.machine_id == mid, WINDOW + 15)
    assert again.body["cycle"] == 1 and time.monotonic() - t >= WINDOW
    wait_for(lambda: cycles(bmc.events()[n:]) == 2, 20, "the watchdog's second power cycle")
    assert bmc.events()[n:].count("boot pxe") == 2  # the boot device is set again before the cycle
    boots_into_discovery(rig, 2, "Waiting")
    booted = rig.wait_event("pxe-booted", lambda e: e.machine_id == mid, 10)
    assert booted.body["extra_cycles"] == 1
    rig.wait_event("done", lambda e: e.machine_id == mid and e.body["event"] == "delete", 10)
    assert cycles(bmc.events()[n:]) == 2


def test_a_machine_that_never_pxe_boots_is_given_up_loudly(rig):
    mid, bmc = machine_id(3), rig.farm.bmc(3)
    n = len(bmc.events())
    rig.publish({"type": "delete", "old": mid})
    rig.wait_event("pxe-watchdog", lambda e: e.machine_id == mid, WINDOW + 15)
    gave_up = rig.wait_event("pxe-watchdog-given-up", lambda e: e.machine_id == mid, 2 * WINDOW + 15)
    assert gave_up.body["extra_cycles"] == 1
    rig.wait_event("done", lambda e: e.machine_id == mid and e.body["event"] == "delete", 10)
    assert cycles(bmc.events()[n:]) == 2  # one for the free, one extra (pxe_boot_watchdog_cycles = 1)
    assert "was not seen PXE booting" in rig.log("nsq_consumer")


def test_a_consumer_restart_while_waiting_neither_loses_nor_repeats_the_cycle(rig):
    mid, bmc = machine_id(4), rig.farm.bmc(4)
    n = len(bmc.events())
    rig.publish({"type": "delete", "old": mid})
    wait_for(lambda: cycles(bmc.events()[n:]) == 1, 20, "the free's power cycle")
    time.sleep(0.5)
    t = time.monotonic()
    rig.stop_stage("nsq_consumer")  # SIGTERM: the waiting message goes back to nsqd at once
    assert time.monotonic() - t < 10, "the consumer's drain waited for the watchdog"
    rig.start_stage("nsq_consumer")
    time.sleep(1.0)
    boots_into_discovery(rig, 4)
    booted = rig.wait_event("pxe-booted", lambda e: e.machine_id == mid, WINDOW + 15)
    assert booted.body["extra_cycles"] == 0
    rig.wait_event("done", lambda e: e.machine_id == mid and e.body["event"] == "delete", 10)
    # the redelivery found the cycle in the ipmi stage's journal: the machine was cycled once
    assert cycles(bmc.events()[n:]) == 1, bmc.events()[n:]
