"""Request validation against metal-core's swagger, the served spec, and the error -> status map."""

from __future__ import annotations

import httpx
import pytest

from metalcore.errors import CircuitOpen, MetalAPIError, MetalAPIUnavailable
from metalcore.hammer.errors import BadRequest, BootOrderFailed, BootOrderTimeout, Incomplete, status_for
from metalcore.hammer.spec import RequestValidator, served_spec

V = RequestValidator()


def test_types_checked_presence_not():
    assert V.errors("domain.MetalHammerRegisterMachineRequest", {}) == []
    assert V.errors("domain.MetalHammerRegisterMachineRequest", {"nics": None, "bios": None}) == []
    errs = V.errors("domain.MetalHammerRegisterMachineRequest",
                    {"cpu_cores": "4", "nics": [{"neighbors": [{"mac": 1}]}], "disks": [True]})
    assert [e.split(":")[0] for e in errs] == ["cpu_cores", "disks/0", "nics/0/neighbors/0/mac"]


def test_go_integer_bounds():
    assert V.errors("domain.MetalHammerRegisterMachineRequest", {"cpu_cores": 1 << 31})
    assert not V.errors("domain.MetalHammerRegisterMachineRequest", {"memory": 1 << 40})


def test_required_only_where_needed():
    assert V.errors("domain.Report", {}) == ["<body>: 'success' is a required property"]
    assert V.errors("models.V1MachineProvisioningEvent", {"message": "x"})
    assert V.errors("domain.MetalHammerAbortReinstallRequest", {}) == []


def test_served_spec_documents_real_answers():
    spec = served_spec()
    install = spec["paths"]["/machine/install/{id}"]["get"]["responses"]
    assert {"200", "304", "404", "417", "502", "503", "504"} <= set(install)
    assert spec["paths"]["/v1/dhcp/{id}"]["get"]["responses"]["200"]["schema"] == {"type": "object"}
    assert spec["definitions"]["models.V1MachineResponse"]["properties"]["allocation"]["x-nullable"] is True
    assert "required" not in spec["definitions"]["domain.MetalHammerRegisterMachineRequest"]


def _unavailable_after_timeout() -> MetalAPIUnavailable:
    try:
        raise httpx.ReadTimeout("slow")
    except httpx.ReadTimeout:
        return MetalAPIUnavailable("metal-api timed out (GET /v1/machine/x): ReadTimeout")


@pytest.mark.parametrize("error,status", [
    (MetalAPIError(404, "no machine"), 404),
    (MetalAPIError(422, "refused"), 422),
    (MetalAPIError(403, "bad mac"), 502),
    (MetalAPIError(401, "who"), 502),
    (MetalAPIError(500, "boom"), 502),
    (MetalAPIError(503, "down"), 503),
    (MetalAPIError(504, "slow"), 504),
    (MetalAPIUnavailable("metal-api unreachable (GET /x): ConnectError"), 503),
    (CircuitOpen("open"), 503),
    (BadRequest("x"), 400), (Incomplete("x"), 417), (BootOrderFailed("x"), 500), (BootOrderTimeout("x"), 504),
    (RuntimeError("bug"), 500),
])
def test_status_for(error, status):
    assert status_for(error) == status


def test_timeout_is_504():
    assert status_for(_unavailable_after_timeout()) == 504
