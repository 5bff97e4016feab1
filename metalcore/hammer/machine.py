"""Blueprint ``machine``: metal-hammer's calls, forwarded to the Metal API (research note §1.1, §1.5)."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response

from metalcore.errors import MetalAPIError, MetalAPIUnavailable
from metalcore.hammer.bootorder import restore_pxe, set_boot_device
from metalcore.hammer.context import check_id, ctx, json_body, json_response, track
from metalcore.hammer.errors import BadRequest, Incomplete, NotAcceptable

bp = Blueprint("machine", __name__)

# Go's time.Time reads RFC 3339 (with optional fractional seconds); anything else the Metal API refuses
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def _register_request(machine_id: str, body: dict[str, Any], settings: Any) -> dict[str, Any]:
    """metal-api v1.MachineRegisterRequest from the hammer's body (metal-core register.go@d4a35e7):
    the path id is the uuid, partition and rack come from this rack's settings, never from the body."""
    return {
        "uuid": machine_id,
        "partitionid": settings.partition_id,
        "rackid": settings.rack_id,
        "hardware": {"memory": body.get("memory") or 0, "cpu_cores": body.get("cpu_cores") or 0,
                     "nics": body.get("nics") or [], "disks": body.get("disks") or []},
        "ipmi": body.get("ipmi"),
        "bios": body.get("bios"),
    }


@bp.post("/machine/register/<machine_id>")
def register(machine_id: str) -> Response:
    """Register (create or update) the machine; 200 with the Metal API's machine either way."""
    machine_id = check_id(machine_id)
    t = track("register", machine_id=machine_id)
    c = ctx()
    body = json_body("domain.MetalHammerRegisterMachineRequest")
    # the MACs link this machine id to the DHCP packets its NICs sent (metalcore trace, boot-loop count)
    macs = [n["mac"].lower() for n in body.get("nics") or () if isinstance(n, dict) and isinstance(n.get("mac"), str)]
    t.mac = macs[0] if macs else None
    t.extra["macs"] = macs
    status, machine = c.metal_api.register_machine(_register_request(machine_id, body, c.settings))
    t.extra["created"] = status == 201
    return json_response(machine)


@bp.get("/machine/install/<machine_id>")
def install(machine_id: str) -> Response:
    """Long-poll until the machine is allocated: 200 with the machine, 304 "not yet, ask again"."""
    machine_id = check_id(machine_id)
    c = ctx()
    t = track("install-done", machine_id=machine_id, failed_name="install-failed")
    c.events.publish("install-wait", {}, machine_id=machine_id)
    with c.long_poll():
        machine = c.metal_api.wait_for_allocation(machine_id)
    if machine is None:  # metal-api's 504 after 30 s: metal-hammer asks again at once on 304
        t.outcome = "install-retry"
        return Response(status=304)
    allocation = machine.get("allocation") if isinstance(machine, dict) else None
    if not isinstance(allocation, dict):
        raise Incomplete(f"machine {machine_id} was released from waiting but has no allocation")
    image = allocation.get("image")
    if not isinstance(image, dict) or not image:
        raise Incomplete(f"allocation of machine {machine_id} has no image")
    t.extra["image"] = image.get("id")
    return json_response(machine)


def _finalize_request(report: dict[str, Any]) -> dict[str, Any]:
    """metal-api v1.MachineFinalizeAllocationRequest from the hammer's Report (field names differ)."""
    def s(key: str) -> str:
        v = report.get(key)
        return v if isinstance(v, str) else ""
    return {"console_password": s("console_password"), "primarydisk": s("primary_disk"),
            "ospartition": s("os_partition"), "initrd": s("initrd"), "cmdline": s("cmdline"),
            "kernel": s("kernel"), "bootloaderid": s("bootloaderid")}


@bp.post("/machine/report/<machine_id>")
def report(machine_id: str) -> Response:
    """The install's result: boot device disk (if configured), then finalize the allocation.

    Order matters: a failed boot-order change answers an error and finalizes nothing; the switch stage
    hears ``hammer.report-done`` only after the finalize (it then moves the ports to the tenant VRF)."""
    machine_id = check_id(machine_id)
    t = track("report-done", machine_id=machine_id, failed_name="report-failed")
    c = ctx()
    body = json_body("domain.Report")
    if not body.get("success"):
        message = body.get("message") or "no message"
        t.extra["hammer_message"] = message[:500]
        raise NotAcceptable(f"installation of machine {machine_id} failed ({message}); nothing finalized")
    if c.settings.change_boot_order:
        set_boot_device(c, machine_id, "disk", consequence="allocation not finalized")
    try:
        c.metal_api.finalize_allocation(machine_id, _finalize_request(body))
    except (MetalAPIError, MetalAPIUnavailable):
        if c.settings.change_boot_order:
            t.extra["boot_device_restored"] = restore_pxe(c, machine_id)
        raise
    return json_response({})


@bp.post("/machine/<machine_id>/event")
def event(machine_id: str) -> Response:
    """A provisioning event (Preparing, Registering, Waiting, Installing, ...)."""
    machine_id = check_id(machine_id)
    t = track("event", machine_id=machine_id)
    body = json_body("models.V1MachineProvisioningEvent")
    if not body.get("event"):
        raise BadRequest("event: must be a provisioning event type such as 'Preparing', got "
                         f"{body.get('event')!r}")
    ev = {k: body[k] for k in ("event", "message") if body.get(k) is not None}
    if body.get("time"):  # "" is Go's zero value: leave the time to the Metal API
        if not RFC3339.match(body["time"]):
            raise BadRequest(f"time: {body['time'][:64]!r} is not an RFC 3339 date-time")
        ev["time"] = body["time"]
    t.extra["event"] = ev["event"]
    ctx().metal_api.add_provisioning_event(machine_id, ev)
    return json_response({})


@bp.get("/machine/<machine_id>")
def machine(machine_id: str) -> Response:
    """The machine as the Metal API knows it (the hammer checks for a reinstall)."""
    machine_id = check_id(machine_id)
    track("machine", machine_id=machine_id)
    return json_response(ctx().metal_api.get_machine(machine_id))


@bp.post("/machine/abort-reinstall/<machine_id>")
def abort_reinstall(machine_id: str) -> Response:
    """Abort a reinstall (the disk was not wiped): the machine boots its old OS from disk again.

    metal-core never put the id into the Metal API's path (research note §1.5); here it is."""
    machine_id = check_id(machine_id)
    t = track("abort-reinstall", machine_id=machine_id)
    c = ctx()
    body = json_body("domain.MetalHammerAbortReinstallRequest")
    wiped = body.get("primary_disk_wiped") is True
    t.extra["primary_disk_wiped"] = wiped
    boot_info = c.metal_api.abort_reinstall(machine_id, {"primary_disk_wiped": wiped})
    if c.settings.change_boot_order:
        set_boot_device(c, machine_id, "disk", consequence="reinstall aborted, but the boot device is unchanged")
    return json_response(boot_info)
