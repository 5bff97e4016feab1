"""Did the machine really PXE boot after we power-cycled it into PXE? Pure policy of the watchdog that
keeps a "free" (or reinstall) machine event unfinished until the answer is yes.

Why: an IPMI "boot device PXE + cycle" that the BMC acknowledged does not prove the machine PXE booted.
When metalcore's PXE stage is down (restarting) while the machine's PXE ROM asks for a boot file, the ROM
gets no proxy offer and boots the next device: the freed machine comes up from its disk, with the last
tenant's OS, on the PXE network. metal-api only flags such a machine afterwards (``failed_machine_reclaim``);
metalcore cycles it again.

The evidence is the Metal API's provisioning event log of the machine, where the state lives (metal-contracts
§5: ``PXE Booting`` from metal-core's DHCP answer, then ``Preparing``, ``Registering``, ``Waiting`` from
metal-hammer), with a time after the event was published. The log survives a restart of metalcore, so
a redelivered message does not cycle a machine that already came up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Iterable

from metalcore.protocol.machine_events import Plan

__all__ = ["DISCOVERY_EVENTS", "Step", "Watchdog", "booted_since", "event_time", "wants_pxe_boot"]

# Events that only a machine running into discovery sends (metal-contracts.md §5).
DISCOVERY_EVENTS = frozenset({"PXE Booting", "Preparing", "Registering", "Waiting"})


def wants_pxe_boot(p: Plan) -> bool:
    """The plan ends with the machine rebooting into PXE: boot device PXE, then a power action that boots."""
    device = None
    for a in p.actions:
        if a.kind == "boot-device":
            device = a.body.get("device")
        elif a.kind == "power" and a.body.get("state") in ("cycle", "reset", "on") and device == "pxe":
            return True
    return False


def event_time(value: Any) -> float | None:
    """metal-api's RFC 3339 times ("2026-11-25T07:20:00.123456Z") as Unix seconds; None if unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:  # metal-api writes UTC; a time without zone is read as UTC too
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def booted_since(machine: dict, since: float) -> bool:
    """Whether the machine's provisioning log (a V1MachineResponse) shows a discovery event at or after
    ``since`` (Unix seconds)."""
    log: Iterable[Any] = ((machine or {}).get("events") or {}).get("log") or ()
    for e in log:
        if isinstance(e, dict) and e.get("event") in DISCOVERY_EVENTS:
            t = event_time(e.get("time"))
            if t is not None and t >= since:
                return True
    return False


class Step(str, Enum):
    DONE = "done"          # seen booting into discovery: finish the message
    WAIT = "wait"          # not yet (or the Metal API could not tell): look again later
    CYCLE = "cycle"        # the window passed without a PXE boot: power-cycle again
    GIVE_UP = "give-up"    # every extra cycle spent: finish, loudly

    def __str__(self) -> str:
        return self.value


@dataclass
class Watchdog:
    """``window`` seconds per boot attempt; ``cycles`` extra power cycles at most. Times are the caller's
    monotonic clock. An unknown answer (Metal API down) never triggers a cycle: cycling a machine that
    may be running its discovery initrd would only restart it, but doing so blind is not our call."""

    window: float
    cycles: int
    started: float
    cycled: int = 0
    _attempt_started: float | None = None

    def __post_init__(self) -> None:
        self._attempt_started = self.started

    def step(self, now: float, seen: bool | None) -> Step:
        if seen:
            return Step.DONE
        if now - self.started >= self.window * (self.cycles + 2):
            return Step.GIVE_UP  # the Metal API could not tell us for that long: do not hold the event forever
        if seen is None or now - self._attempt_started < self.window:
            return Step.WAIT
        if self.cycled >= self.cycles:
            return Step.GIVE_UP
        return Step.CYCLE

    def cycled_at(self, now: float) -> None:
        self.cycled += 1
        self._attempt_started = now

    def deadline(self) -> float:
        """When this attempt's window ends (monotonic)."""
        return self._attempt_started + self.window
