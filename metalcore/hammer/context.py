"""What every view needs, built once by create_app and kept in ``app.extensions``; request helpers."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from functools import wraps
from contextlib import contextmanager
from typing import Any, Iterator

from flask import Response, current_app, g, request

from metalcore.hammer.errors import BadRequest
from metalcore.hammer.observe import LONG_POLLS, UPSTREAM_SECONDS, BusEvents, child
from metalcore.hammer.spec import RequestValidator

__all__ = ["EXTENSION", "HammerContext", "MAX_BODY_BYTES", "TimedMetalAPI", "check_id", "ctx", "json_body",
           "json_response", "track"]

EXTENSION = "metalcore.hammer"
# metal-hammer's largest body is a register with a few dozen NICs and disks (a few KiB); 1 MiB is
# generous for that and small enough that a broken or hostile client cannot make us buffer much.
MAX_BODY_BYTES = 1 << 20
# metal-api machine ids are UUIDs (36 characters); anything much longer is not an id.
MAX_ID_LENGTH = 256


class TimedMetalAPI:
    """Wraps the Metal API client so that every call lands in upstream_seconds{call}."""

    _NAMES = {"find_machines_by_mac": "find", "get_partition": "partition", "register_machine": "register",
              "wait_for_allocation": "wait", "add_provisioning_event": "event",
              "finalize_allocation": "finalize", "abort_reinstall": "abort-reinstall", "get_machine": "machine"}

    def __init__(self, client: Any) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.client, name)
        if not callable(target) or name.startswith("_"):
            return target
        call = self._NAMES.get(name, name)
        ok, error = child(UPSTREAM_SECONDS, call, "ok"), child(UPSTREAM_SECONDS, call, "error")
        clock = time.perf_counter

        @wraps(target)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                result = target(*args, **kwargs)
            except BaseException:
                error.observe(clock() - started)
                raise
            ok.observe(clock() - started)
            return result
        # kept: the next lookup finds the attribute and never comes here again (one wrapper per method,
        # not one per request)
        setattr(self, name, timed)
        return timed


@dataclass
class HammerContext:
    settings: Any
    metal_api: Any                      # TimedMetalAPI around a MetalAPIClient
    events: BusEvents
    decider: Any                        # metalcore.boot.BootDecider
    jobs: Any = None                    # metalcore.bus.JobClient to the ipmi stage (None: no boot order)
    validator: RequestValidator = field(default_factory=RequestValidator)
    owns_jobs: bool = False
    spec_json: bytes = b""
    in_flight: int = 0                  # requests being answered now (for drain and the heartbeat)
    long_polls: int = 0                 # of which install long-polls
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    @contextmanager
    def long_poll(self) -> Iterator[None]:
        """Count one held install long-poll (here and in the long_polls_held gauge)."""
        with self._lock:
            self.long_polls += 1
        LONG_POLLS.inc()
        try:
            yield
        finally:
            LONG_POLLS.dec()
            with self._lock:
                self.long_polls -= 1

    def close(self) -> None:
        if self.owns_jobs and self.jobs is not None:
            self.jobs.close()


def ctx() -> HammerContext:
    return current_app.extensions[EXTENSION]


@dataclass
class Tracked:
    ok_name: str
    failed_name: str
    machine_id: str | None
    mac: str | None
    started: float
    extra: dict[str, Any] = field(default_factory=dict)
    outcome: str | None = None          # overrides ok/failed (e.g. install-retry)


def track(ok_name: str, *, machine_id: str | None = None, mac: str | None = None,
          failed_name: str | None = None) -> Tracked:
    """Mark this request for the bus: one event with its outcome is published after the answer."""
    t = Tracked(ok_name, failed_name or f"{ok_name}-failed", machine_id, mac, time.monotonic())
    g.tracked = t
    return t


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_id(value: str, what: str = "machine id") -> str:
    """Any id the Metal API could hold (it is quoted into the upstream path), but no control characters
    (they would end up in logs and bus events) and nothing longer than MAX_ID_LENGTH."""
    if len(value) > MAX_ID_LENGTH or _CONTROL.search(value):
        raise BadRequest(f"{what} {value[:64]!r}: not a valid id (no control characters, at most "
                         f"{MAX_ID_LENGTH} characters)")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_body(definition: str) -> dict[str, Any]:
    """The request body parsed and validated against the spec's ``definition``; 400 when not."""
    raw = request.get_data(cache=False)
    if not raw.strip():
        raise BadRequest("request body missing: expected a JSON object")
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"<body>: expected a JSON object ({definition}), got {type(body).__name__}")
    errors = ctx().validator.errors(definition, body)
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise BadRequest("; ".join(errors[:3]) + more)
    return body


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), status=status, mimetype="application/json")


def route_name() -> str:
    return request.url_rule.rule if request.url_rule is not None else "unknown"

