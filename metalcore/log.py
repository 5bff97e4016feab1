"""Logging through loguru: JSON lines when not on a terminal, readable text on one.

Every line carries the stage and pid, and where known the machine id, MAC and trace id (bind them with
``logger.bind(machine_id=..., mac=..., trace_id=...)`` or ``logger.contextualize``). Secrets registered
with :func:`setup` are replaced by ``***`` in the message and in every extra field before a line is written,
so a key that slips into an exception text still never reaches a log file.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time
from typing import Iterable, TextIO

from loguru import logger

_CONTEXT_KEYS = ("machine_id", "mac", "trace_id")


class ErrorCounter:
    """Counts ERROR-and-above lines of the last minute, for `metalcore status` via the heartbeat."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def add(self, now: float) -> None:
        with self._lock:
            self._times.append(now)

    def count(self, now: float) -> int:
        with self._lock:
            while self._times and self._times[0] < now - self.window:
                self._times.popleft()
            return len(self._times)


errors = ErrorCounter()


class _Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        # longest first, so a secret that contains another is hidden whole
        self.secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "***")
        return text


def _json_line(record, redact: _Redactor) -> str:
    extra = dict(record["extra"])
    out = {
        "time": record["time"].isoformat(),
        "level": record["level"].name.lower(),
        "stage": extra.pop("stage", None),
        "pid": record["process"].id,
        "msg": redact(record["message"]),
    }
    for key in _CONTEXT_KEYS:
        if extra.get(key) is not None:
            out[key] = extra.pop(key)
        else:
            extra.pop(key, None)
    for k, v in extra.items():
        out[k] = v if isinstance(v, (int, float, bool)) or v is None else redact(str(v))
    if record["exception"] is not None:
        import traceback
        exc = record["exception"]
        out["error"] = redact("".join(traceback.format_exception(exc.type, exc.value, exc.traceback)))
    return json.dumps(out, ensure_ascii=False)


def setup(stage: str, level: str = "info", secrets: Iterable[str] = (), stream: TextIO | None = None,
          json_lines: bool | None = None) -> None:
    """Configure the process-wide logger. Call once, from a stage's main()."""
    stream = stream or sys.stderr
    if json_lines is None:
        json_lines = not (hasattr(stream, "isatty") and stream.isatty())
    level = {"warn": "WARNING"}.get(level.lower(), level.upper())
    redact = _Redactor(secrets)
    logger.remove()
    logger.configure(extra={"stage": stage, "pid": os.getpid()})

    def count_errors(message) -> None:
        errors.add(time.time())

    logger.add(count_errors, level="ERROR", format="{message}")
    if json_lines:
        def sink(message) -> None:
            stream.write(_json_line(message.record, redact) + "\n")
            stream.flush()
        logger.add(sink, level=level, format="{message}", backtrace=False, diagnose=False)
    else:
        def patch(record) -> None:
            record["message"] = redact(record["message"])
            ctx = " ".join(f"{k}={record['extra'][k]}" for k in _CONTEXT_KEYS if record["extra"].get(k))
            record["extra"]["ctx"] = (" " + ctx) if ctx else ""
        logger.configure(patcher=patch)
        logger.add(stream, level=level, colorize=True, backtrace=False, diagnose=False,
                   format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
                          "<cyan>{extra[stage]}</cyan>[{process}]{extra[ctx]} {message}")
