"""Blueprint ``boot``: what pixiecore (API mode) asked metal-core (research note §1.3)."""

from __future__ import annotations

from flask import Blueprint, Response
from loguru import logger

from metalcore.boot import Verdict, normalize_mac
from metalcore.errors import MetalAPIError, MetalAPIUnavailable
from metalcore.hammer.context import check_id, ctx, json_response, track
from metalcore.hammer.errors import BadRequest, message_for, error_response

bp = Blueprint("boot", __name__)

# What pixiecore gets when it must not boot the machine: any non-200 makes it ignore the machine
# (metal-core wrote an empty 200, which pixiecore also rejected, as "malformed").
_NO_BOOT_STATUS = {Verdict.DISK: 404, Verdict.AMBIGUOUS: 409, Verdict.UNAVAILABLE: 503,
                   Verdict.NO_BOOTCONFIG: 503}


@bp.get("/v1/boot/<mac>")
def boot(mac: str) -> Response:
    """Discovery BootResponse for a machine to (re)install; an error status when it boots from disk."""
    try:
        mac = normalize_mac(mac)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    t = track("boot", mac=mac)
    d = ctx().decider.explain(mac)
    t.machine_id = d.machine_id
    t.extra.update(verdict=d.verdict.value, reason=d.reason, cached=d.cached)
    if d.response is not None:
        return json_response(d.response.to_dict())
    t.outcome = "boot"  # a decision not to boot is an outcome, not a failure
    return error_response(_NO_BOOT_STATUS.get(d.verdict, 503), f"not booting {mac}: {d.reason}")


@bp.get("/v1/dhcp/<guid>")
def dhcp(guid: str) -> Response:
    """pixiecore saw a DHCP request with a client GUID (option 97): log 'PXE Booting' for that machine.

    Always 200 {} as metal-core did: the event is bookkeeping and must not stop a boot."""
    guid = check_id(guid)
    t = track("dhcp", machine_id=guid)
    try:
        ctx().metal_api.add_provisioning_event(
            guid, {"event": "PXE Booting", "message": "machine sent extended dhcp request"})
    except (MetalAPIError, MetalAPIUnavailable) as e:
        logger.bind(machine_id=guid).warning("could not send 'PXE Booting' of {}: {}", guid, e)
        t.outcome = "dhcp-failed"
        t.extra["error"] = message_for(e)
    return json_response({})
