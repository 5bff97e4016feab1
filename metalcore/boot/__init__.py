"""The boot decision shared by the PXE stage and the hammer proxy's ``GET /v1/boot/{mac}``.

Should a machine that asks for a network boot get metal-hammer (discovery), or be left alone so it
boots from its disk? metal-core answered that in ``internal/endpoint/boot.go@d4a35e7`` (research note
metal-contracts.md §1.3); this package keeps its answers and fixes its failure modes:

    from metalcore.boot import BootDecider
    decider = BootDecider(settings, metal_api)          # one per stage process, thread-safe
    resp = decider.decide("aa:bb:cc:dd:ee:ff")          # BootResponse | None (None: boot from disk)
    d = decider.explain(mac)                            # Decision: .response .reason .machine_id .cached
    decider.set_fallback_bootconfig(bootconfig)         # e.g. from the switch stage's switch.bootconfig

``decision.py`` is pure (classify the machines found, build the response, the per-MAC cache with the
clock passed in); ``service.py`` asks the Metal API through the client it is given.
"""

from metalcore.boot.decision import (
    BootConfig,
    BootResponse,
    Decision,
    DecisionCache,
    Verdict,
    build_response,
    classify,
    normalize_mac,
)
from metalcore.boot.service import BootDecider

__all__ = [
    "BootConfig",
    "BootDecider",
    "BootResponse",
    "Decision",
    "DecisionCache",
    "Verdict",
    "build_response",
    "classify",
    "normalize_mac",
]
