"""Boot-device jobs to the IPMI stage over the bus (the IPMI worker looks the BMC credentials up).

metal-core set the persistent boot device to disk before finalizing an allocation (research note
§1.5, ``METAL_CORE_CHANGE_BOOT_ORDER``); a failure there must leave the allocation unfinalized, so the
caller only finalizes after :func:`set_boot_device` returned.

Job ids are random, not derived from the machine: a hammer that reports again after a failed
attempt must get a new attempt, not the journaled failure of the old one. A repeat of one job (bus
resend) is still harmless: "boot device disk" is a target state.
"""

from __future__ import annotations

import concurrent.futures

from loguru import logger

from metalcore.bus import JobTimeout
from metalcore.hammer.context import HammerContext
from metalcore.hammer.errors import BootOrderFailed, BootOrderTimeout
from metalcore.hammer.observe import IPMI_JOBS
from metalcore.protocol.envelope import trace_id_for

__all__ = ["JOB_NAME", "restore_pxe", "set_boot_device"]

JOB_NAME = "boot-device"


def _body(machine_id: str, device: str) -> dict:
    # persistent: the next and every later boot; efi: metal-stack machines boot UEFI
    return {"machine_id": machine_id, "device": device, "persistent": True, "efi": True}


def set_boot_device(c: HammerContext, machine_id: str, device: str, *, consequence: str) -> None:
    """Ask the IPMI stage to set ``device`` and wait; BootOrderFailed/BootOrderTimeout when it did not.

    ``consequence`` ends the error message ("allocation not finalized") so the hammer's log says it.
    """
    timeout = float(c.settings.boot_order_timeout)
    log = logger.bind(machine_id=machine_id)
    if c.jobs is None:
        raise BootOrderFailed(f"cannot set boot device {device} of {machine_id}: no IPMI stage configured; "
                              f"{consequence}")
    try:
        result = c.jobs.call(JOB_NAME, _body(machine_id, device), timeout=timeout, machine_id=machine_id,
                             trace_id=trace_id_for(machine_id))
    except JobTimeout:
        IPMI_JOBS.labels(device, "timeout").inc()
        c.events.publish("boot-device-failed", {"device": device, "error": f"timeout after {timeout:.0f} s"},
                         machine_id=machine_id)
        log.error("IPMI stage did not set boot device {} of {} within {:.0f} s", device, machine_id, timeout)
        raise BootOrderTimeout(f"the IPMI stage did not set boot device {device} of machine {machine_id} "
                               f"within {timeout:.0f} s; {consequence}") from None
    if not result.ok:
        IPMI_JOBS.labels(device, "failed").inc()
        c.events.publish("boot-device-failed", {"device": device, "error": result.error, "job": result.job_id},
                         machine_id=machine_id)
        log.error("setting boot device {} of {} failed: {}", device, machine_id, result.error)
        raise BootOrderFailed(f"setting boot device {device} of machine {machine_id} failed: {result.error}; "
                              f"{consequence}")
    IPMI_JOBS.labels(device, "ok").inc()
    c.events.publish("boot-device", {"device": device, "job": result.job_id}, machine_id=machine_id)


def restore_pxe(c: HammerContext, machine_id: str, wait: float = 10.0) -> bool:
    """Best effort after a failed finalize: boot device back to PXE, so the machine (whose hammer now
    reboots it) is installed again instead of booting a disk whose allocation never succeeded."""
    if c.jobs is None:
        return False
    try:
        result = c.jobs.submit(JOB_NAME, _body(machine_id, "pxe"), machine_id=machine_id,
                               trace_id=trace_id_for(machine_id)).result(wait)
    except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
        logger.bind(machine_id=machine_id).error("could not restore boot device pxe of {} within {:.0f} s",
                                                 machine_id, wait)
        IPMI_JOBS.labels("pxe", "timeout").inc()
        return False
    IPMI_JOBS.labels("pxe", "ok" if result.ok else "failed").inc()
    c.events.publish("boot-device" if result.ok else "boot-device-failed",
                     {"device": "pxe", "job": result.job_id, "error": result.error, "why": "finalize failed"},
                     machine_id=machine_id)
    return result.ok
