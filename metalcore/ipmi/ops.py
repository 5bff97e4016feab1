"""The three BMC operations, each a write followed by a read-back (ironic's ``_set_and_wait`` manners):
an operation returns only when the BMC reads back the asked state, else raises BmcError.

What can be verified (and what cannot) against a BMC:

* power on/off: Get Chassis Status bit 0 must equal the target.
* power cycle/reset: target "on". A machine that is off is powered on instead (a cycle or hard reset of an
  off chassis does nothing on ipmi_sim and most BMCs: the hook logs "power 0"/"reset 1" and it stays off).
  For cycle we also wait to see the off phase (``observed_off``); a BMC that cycles faster than our first
  poll is accepted once it is on and ``OFF_GRACE`` passed. A hard reset has no visible off phase on
  ipmi_sim (power stays on), so reset is verified as "on" only.
* boot device: read back with Get System Boot Options parameter 5 (raw bytes). The device selector is
  verified exactly. The persistent and EFI bits are verified only when the BMC sets the "boot flags
  valid" bit: ipmi_sim never does (it stores the device only, research gotcha 1), so there the result
  says ``persistent_verified: false``. pyghmi's ``get_bootdev()`` is not used: it answers "default" when
  the valid bit is clear, whatever the device.
* identify: verified from Get Chassis Status byte 3 bits 5:4 when the BMC says it reports the identify
  state (bit 6); ipmi_sim does not, so there the result says ``verified: false`` (the command itself
  completed with code 0).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable

from metalcore.ipmi.codec import BOOT_DEVICE, CONTROL, decode_boot_flags, decode_chassis_status
from metalcore.ipmi.session import BmcError, BmcSession

__all__ = ["Ops", "OFF_GRACE"]

POLL_FIRST = 0.02
POLL_MAX = 0.25
OFF_GRACE = 2.0  # seconds we wait to see the off phase of a cycle before accepting "on" without it
CALL_TIMEOUT = 4.0  # one IPMI request; pyghmi retransmits after ~1 s and ~2 s before this


class Ops:
    """Operations on one session; every request takes a slot of the global budget ``budget``."""

    def __init__(self, session: BmcSession, budget: threading.Semaphore, deadline: float,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.s = session
        self.budget = budget
        self.deadline = deadline
        self.clock = clock
        self.sleep = sleep
        self.requests = 0

    @contextmanager
    def _slot(self):
        with self.budget:
            yield

    def _raw(self, netfn: int, command: int, data: tuple[int, ...] = ()) -> bytes:
        left = self.deadline - self.clock()
        if left <= 0:
            raise BmcError(f"{self.s.address}: command timeout reached")
        with self._slot():
            self.requests += 1
            return self.s.raw(netfn, command, data, timeout=min(CALL_TIMEOUT, left))

    def power_on(self) -> bool:
        return decode_chassis_status(self._raw(0x00, 0x01)).power_on

    def _wait_power(self, on: bool, want_off_first: bool = False) -> dict:
        """Poll until the power reads ``on`` (after an off phase if ``want_off_first``)."""
        started = self.clock()
        interval, seen_off = POLL_FIRST, False
        while True:
            state = self.power_on()
            seen_off = seen_off or not state
            if state == on and (not want_off_first or seen_off or self.clock() - started >= OFF_GRACE):
                return {"power": "on" if state else "off", "observed_off": seen_off}
            if self.clock() + interval > self.deadline:
                raise BmcError(f"{self.s.address}: power did not read back {'on' if on else 'off'} "
                               f"within the command timeout (reads {'on' if state else 'off'})")
            self.sleep(interval)
            interval = min(POLL_MAX, interval * 1.5)

    def power(self, state: str) -> dict:
        if state in ("on", "off"):
            self._raw(0x00, 0x02, (CONTROL[state],))
            return {**self._wait_power(state == "on"), "action": state}
        if state not in ("cycle", "reset"):
            raise ValueError(f"unknown power state {state!r}")
        if not self.power_on():
            self._raw(0x00, 0x02, (CONTROL["on"],))
            return {**self._wait_power(True), "action": "on"}
        self._raw(0x00, 0x02, (CONTROL[state],))
        return {**self._wait_power(True, want_off_first=state == "cycle"), "action": state}

    def boot_device(self, device: str, persistent: bool, efi: bool) -> dict:
        if device not in BOOT_DEVICE:
            raise ValueError(f"unknown boot device {device!r}")
        # as pyghmi's set_bootdev: first stop the BIOS boot flag valid-bit clearing timer (param 3 = 0x08),
        # then param 5: valid | persistent | EFI, device selector (metal-core's go-hal used 0xE0/0xA0, §5)
        self._raw(0x00, 0x08, (3, 8))
        flags = 0x80 | (0x40 if persistent else 0) | (0x20 if efi else 0)
        self._raw(0x00, 0x08, (5, flags, BOOT_DEVICE[device], 0, 0, 0))
        read = decode_boot_flags(self._raw(0x00, 0x09, (5, 0, 0)))
        if read.device != device:
            raise BmcError(f"{self.s.address}: boot device reads back {read.device}, not {device}")
        if read.valid and (read.persistent != persistent or read.efi != efi):
            raise BmcError(f"{self.s.address}: boot flags read back persistent={read.persistent} "
                           f"efi={read.efi}, asked persistent={persistent} efi={efi}")
        return {"bootdev": read.device, "persistent": persistent, "efi": efi,
                "persistent_verified": read.valid}

    def identify(self, on: bool) -> dict:
        # Chassis Identify: interval 0 + force bit = on until switched off (metal-core: "forced, indefinite")
        self._raw(0x00, 0x04, (0, 1) if on else (0, 0))
        status = decode_chassis_status(self._raw(0x00, 0x01))
        want = "on" if on else "off"
        if status.identify is not None and status.identify != want:
            raise BmcError(f"{self.s.address}: identify reads back {status.identify}, not {want}")
        return {"identify": want, "verified": status.identify is not None, "power": "on" if status.power_on else "off"}
