"""Boot-loop detector: a MAC that PXE-boots more than ``max_boots`` times within ``window`` seconds
without registering at the Metal API is probably stuck (bad image, hammer crash, wrong boot order).

Pure: the caller passes ``now`` (seconds, any monotonic clock) and acts on the returned
:class:`BootLoopWarning`. Memory is bounded by ``max_macs`` (the oldest-seen MAC is forgotten first):
a rack has tens of machines, a flood of random MACs must not grow the table without end.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

__all__ = ["BootLoopDetector", "BootLoopWarning"]


@dataclass(frozen=True, slots=True)
class BootLoopWarning:
    mac: str
    boots: int  # boots inside the window, this one included
    window: float  # seconds


class BootLoopDetector:
    def __init__(self, *, max_boots: int = 5, window: float = 600.0, max_macs: int = 4096) -> None:
        if max_boots < 1 or window <= 0 or max_macs < 1:
            raise ValueError("max_boots >= 1, window > 0, max_macs >= 1")
        self.max_boots = max_boots
        self.window = window
        self.max_macs = max_macs
        self._boots: OrderedDict[str, deque[float]] = OrderedDict()
        self._warned: set[str] = set()

    def record_boot(self, mac: str, now: float) -> BootLoopWarning | None:
        """Count one PXE boot (call it once per boot, e.g. per served iPXE script, not per DHCP
        retransmit). Returns a warning once when the count first exceeds ``max_boots``; it is
        re-armed after the count falls back to the limit or the MAC registers."""
        times = self._boots.get(mac)
        if times is None:
            times = self._boots[mac] = deque()
            while len(self._boots) > self.max_macs:
                old, _ = self._boots.popitem(last=False)
                self._warned.discard(old)
        else:
            self._boots.move_to_end(mac)
        times.append(now)
        self._expire(mac, times, now)
        if len(times) > self.max_boots:
            if mac not in self._warned:
                self._warned.add(mac)
                return BootLoopWarning(mac, len(times), self.window)
        else:
            self._warned.discard(mac)
        return None

    def registered(self, mac: str) -> None:
        """The machine registered: its boots so far were a success, start counting anew."""
        self._boots.pop(mac, None)
        self._warned.discard(mac)

    def boots(self, mac: str, now: float) -> int:
        times = self._boots.get(mac)
        if times is None:
            return 0
        self._expire(mac, times, now)
        return len(times)

    def _expire(self, mac: str, times: deque[float], now: float) -> None:
        limit = now - self.window
        while times and times[0] <= limit:
            times.popleft()
        if len(times) <= self.max_boots:
            self._warned.discard(mac)

    def prune(self, now: float) -> None:
        """Drop MACs with no boot inside the window (call now and then, e.g. from a timer)."""
        for mac in [m for m, t in self._boots.items() if not t or t[-1] <= now - self.window]:
            del self._boots[mac]
            self._warned.discard(mac)
