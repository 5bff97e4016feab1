"""Pure backoff arithmetic for the NSQ requeue delay and the retries of one BMC command.

No clock, no sleep: callers pass the attempt number and a random source and do the waiting themselves
(pynsq's ``backoff_timer.py`` is pure the same way). "Equal jitter": half the ceiling fixed, half random, so
a retry never comes at once (a BMC that just failed gets at least half the ceiling of rest) and a crowd
of requeued events does not come back in one burst.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Backoff"]


class _Uniform(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0
    """Seconds: the ceiling of the first wait; it doubles with every further attempt."""
    cap: float = 60.0
    """Seconds: no wait is longer."""

    def ceiling(self, attempt: int) -> float:
        """``attempt`` is 1-based: the number of tries that already failed."""
        if attempt < 1:
            return 0.0
        return min(self.cap, self.base * (2 ** min(attempt - 1, 32)))

    def delay(self, attempt: int, rng: _Uniform) -> float:
        c = self.ceiling(attempt)
        return c / 2 + rng.uniform(0.0, c / 2)
