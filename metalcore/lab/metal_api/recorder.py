"""Call log, schema-violation log and fault knobs of the stand-in (all thread-safe, all in memory)."""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["DOWN_MODES", "Faults", "FaultBox", "Recorder"]

MAX_CALLS = 20000  # a whole e2e run of one rack stays far below; older calls are dropped first
DOWN_MODES = (None, "503", "refused")


@dataclass
class Faults:
    """What goes wrong on purpose. Only /v1 paths containing ``match`` are affected ("" = all)."""

    latency: float = 0.0
    """Seconds added before every affected answer."""
    error_rate: float = 0.0
    """Share 0..1 of affected calls answered with ``error_status`` instead of being handled."""
    error_status: int = 500
    down: str | None = None
    """None; "503": every affected call answers 503 {"statuscode":503,"message":"lab: down"};
    "refused": the listening socket is closed (connection refused) for ``down_seconds`` (needs the server,
    see server.py), then reopened on the same port."""
    down_seconds: float = 0.0
    wrong_key: bool = False
    """The server checks against different keys than the clients have: every signed call gets 403."""
    match: str = ""
    seed: int | None = None
    """Seed of the error_rate dice, for reproducible runs."""

    def update(self, changes: dict[str, Any]) -> "Faults":
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown fault knobs {sorted(unknown)}; known: {sorted(names)}")
        merged = Faults(**{**asdict(self), **changes})
        if merged.down not in DOWN_MODES:
            raise ValueError(f"down must be one of {DOWN_MODES}, got {merged.down!r}")
        if not 0.0 <= float(merged.error_rate) <= 1.0:
            raise ValueError(f"error_rate must be within 0..1, got {merged.error_rate!r}")
        if not 500 <= int(merged.error_status) <= 599:
            raise ValueError(f"error_status must be a 5xx, got {merged.error_status!r}")
        if merged.down == "refused" and merged.down_seconds <= 0:
            raise ValueError("down='refused' needs down_seconds > 0 (nothing could turn it back on)")
        return merged


class FaultBox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.faults = Faults()
        self._rng = random.Random()

    def get(self) -> Faults:
        with self._lock:
            return self.faults

    def set(self, changes: dict[str, Any]) -> Faults:
        with self._lock:
            self.faults = self.faults.update(changes)
            if "seed" in changes:
                self._rng = random.Random(self.faults.seed)
            return self.faults

    def reset(self) -> Faults:
        with self._lock:
            self.faults = Faults()
            return self.faults

    def roll(self, rate: float) -> bool:
        with self._lock:
            return rate > 0 and self._rng.random() < rate


class Recorder:
    """Every /v1 call (method, path, body, status, time) and every schema violation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[dict] = []
        self._dropped = 0
        self._violations: list[dict] = []

    def call(self, record: dict) -> None:
        with self._lock:
            self._calls.append(record)
            if len(self._calls) > MAX_CALLS:
                del self._calls[: len(self._calls) - MAX_CALLS]
                self._dropped += 1

    def calls(self) -> list[dict]:
        with self._lock:
            return list(self._calls)

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def violation(self, record: dict) -> None:
        with self._lock:
            self._violations.append(record)

    def violations(self) -> list[dict]:
        with self._lock:
            return list(self._violations)

    def take_violations(self) -> list[dict]:
        with self._lock:
            out, self._violations = self._violations, []
            return out
