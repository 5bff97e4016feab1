"""Pure retry and circuit-breaker logic for the Metal API client: no I/O, no sleeping, clock passed in.

``RetryPolicy`` answers "may I try again, and after how long?" (jittered exponential backoff, "full
jitter": delay = uniform(0, min(cap, base * 2**attempt))). ``CircuitBreaker`` answers "may I call at
all?": it opens after ``failure_threshold`` consecutive failures, lets ONE trial call through after
``reset_timeout`` seconds (half-open) and closes again on its success, re-opens on its failure.
The client owns the I/O and feeds both with ``now`` from a monotonic clock (aioquic's
``get_timer``/``handle_timer`` manners; pynsq ``backoff_timer.py`` is pure the same way).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

__all__ = ["BreakerState", "CircuitBreaker", "RetryPolicy"]


class _Uniform(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently an idempotent call is retried."""

    max_attempts: int = 4
    """Total tries of one call, the first included; 1 means no retry."""
    base_delay: float = 0.2
    """Seconds; the backoff ceiling before jitter doubles from here each attempt."""
    max_delay: float = 3.0
    """Seconds; no single wait is longer (so 4 attempts wait at most ~0.2+0.4+0.8 s plus jitter)."""

    def should_retry(self, attempt: int) -> bool:
        """``attempt`` is the 0-based index of the try that just failed."""
        return attempt + 1 < self.max_attempts

    def delay(self, attempt: int, rng: _Uniform) -> float:
        """Seconds to wait after failed try ``attempt`` (0-based); random in [0, ceiling]."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** attempt))
        return rng.uniform(0.0, ceiling)


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker. Thread-safe (several NSQ handlers share one client)."""

    def __init__(self, failure_threshold: int = 5, reset_timeout: float = 10.0) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._lock = threading.Lock()

    def state(self, now: float) -> BreakerState:
        with self._lock:
            return self._state_locked(now)

    def _state_locked(self, now: float) -> BreakerState:
        if self._state is BreakerState.OPEN and now - self._opened_at >= self.reset_timeout:
            self._state = BreakerState.HALF_OPEN
            self._trial_in_flight = False
        return self._state

    def allow(self, now: float) -> bool:
        """True if a call may go out now. In half-open only one trial call at a time is allowed."""
        with self._lock:
            state = self._state_locked(now)
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def retry_after(self, now: float) -> float:
        """Seconds until the breaker lets a trial through (0 when closed or half-open)."""
        with self._lock:
            if self._state_locked(now) is BreakerState.OPEN:
                return max(0.0, self.reset_timeout - (now - self._opened_at))
            return 0.0

    def record_success(self) -> None:
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._trial_in_flight = False

    def record_failure(self, now: float) -> None:
        with self._lock:
            state = self._state_locked(now)
            self._failures += 1
            if state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
                self._state = BreakerState.OPEN
                self._opened_at = now
                self._trial_in_flight = False

    @property
    def consecutive_failures(self) -> int:
        return self._failures
