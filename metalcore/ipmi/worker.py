"""The IPMI worker: serves the ipmi stage's jobs ("power", "boot-device", "identify") against BMCs.

Shape (ironic's manners without its globals, STYLE lesson 11):

* one :class:`Lane` per BMC (host, port, user): the jobs for one BMC run one at a time in arrival order
  (a ticket lock), over one session that the lane owns;
* a global budget of IPMI requests in flight (``ipmi_concurrency``): a semaphore taken per request, not per
  job, so a power cycle waiting for its read-back does not hold a slot while it sleeps;
* a deadline per job (``ipmi_timeout``), split over up to ``ipmi_attempts`` attempts with jittered backoff;
  a failed attempt drops the session, so the next one logs in fresh (session.py);
* a circuit per BMC: after ``CIRCUIT_THRESHOLD`` failed jobs in a row it opens for ``CIRCUIT_RESET`` seconds
  and jobs fail at once ("circuit open"): the NSQ consumer requeues them with its own backoff; a half-open
  trial job closes it again. Metric ``metalcore_ipmi_bmc_health{bmc}``: 1 closed, 0.5 half-open, 0 open;
* credentials from the job (``ipmi``) when it carries them, else ``GET /v1/machine/{id}/ipmi``, cached for
  ``CREDENTIALS_TTL`` seconds and forgotten at once when the BMC refuses them.

A failed job raises JobFailed with ``[at <unix time>]`` at the end of its text: the consumer compares it
with the start of its delivery to tell a failure it just caused from one the bus journal replays.
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

from loguru import logger

from metalcore import metrics
from metalcore.bus import JobFailed
from metalcore.clients.resilience import BreakerState, CircuitBreaker
from metalcore.errors import MetalAPIError, MetalAPIUnavailable
from metalcore.ipmi.codec import BmcAddress, parse_address
from metalcore.ipmi.ops import Ops
from metalcore.ipmi.session import IDLE_DROP, BmcError, BmcSession, Watchdog
from metalcore.protocol.backoff import Backoff
from metalcore.protocol.envelope import Envelope

__all__ = ["Credentials", "CredentialCache", "IpmiWorker", "failed"]

CREDENTIALS_TTL = 30.0
CIRCUIT_THRESHOLD = 3
CIRCUIT_RESET = 5.0
JOB_NAMES = ("power", "boot-device", "identify")
POWER_STATES = ("on", "off", "reset", "cycle")
DEVICES = ("pxe", "disk", "bios")

_STAGE = "ipmi"
M_COMMANDS = metrics.counter(_STAGE, "jobs_total", "BMC jobs by name and outcome", ("job", "outcome"))
M_SECONDS = metrics.histogram(_STAGE, "job_seconds", "BMC job time including read-back", ("job",))
M_HEALTH = metrics.gauge(_STAGE, "bmc_health", "BMC circuit: 1 closed, 0.5 half-open, 0 open", ("bmc",))
M_LOGINS = metrics.counter(_STAGE, "logins_total", "IPMI session logins")
M_IDLE = metrics.counter(_STAGE, "idle_drops_total", "Sessions logged out after being idle (pyghmi idle trap)")
M_RETRIES = metrics.counter(_STAGE, "retries_total", "Attempts of a BMC job after the first")
M_SESSIONS = metrics.gauge(_STAGE, "sessions", "Open IPMI sessions")


def failed(message: str, clock: Callable[[], float] = time.time) -> JobFailed:
    return JobFailed(f"{message} [at {clock():.6f}]")


@dataclass(frozen=True)
class Credentials:
    address: BmcAddress
    user: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials({self.address}, user={self.user!r})"


def _parse_credentials(obj: Any, where: str) -> Credentials:
    if not isinstance(obj, dict) or not isinstance(obj.get("address"), str):
        raise failed(f"{where}: no BMC address")
    try:
        addr = parse_address(obj["address"])
    except ValueError as e:
        raise failed(f"{where}: {e}") from None
    # metal-core's goipmi defaulted empty credentials to ADMIN/ADMIN (internal/ipmi/connection.go@d4a35e7)
    return Credentials(addr, obj.get("user") or "ADMIN", obj.get("password") or "ADMIN")


class CredentialCache:
    """machine id -> Credentials, briefly; a job's own ``ipmi`` always wins and refreshes the cache."""

    def __init__(self, metal_api, ttl: float = CREDENTIALS_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.metal_api = metal_api
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, Credentials]] = {}
        self._lock = threading.Lock()
        self.fetches = 0

    def get(self, machine_id: str, given: Any = None) -> Credentials:
        now = self.clock()
        if given is not None:
            creds = _parse_credentials(given, f"machine {machine_id}: ipmi of the job")
            with self._lock:
                self._cache[machine_id] = (now, creds)
            return creds
        with self._lock:
            hit = self._cache.get(machine_id)
        if hit and now - hit[0] < self.ttl:
            return hit[1]
        if self.metal_api is None:
            raise failed(f"machine {machine_id}: no ipmi in the job and no Metal API to ask")
        try:
            self.fetches += 1
            answer = self.metal_api.get_ipmi(machine_id)
        except MetalAPIError as e:
            raise failed(f"machine {machine_id}: metal-api has no IPMI data: {e}") from None
        except MetalAPIUnavailable as e:
            raise failed(f"machine {machine_id}: metal-api unavailable for IPMI data: {e}") from None
        creds = _parse_credentials((answer or {}).get("ipmi"), f"machine {machine_id}: GET /v1/machine/{{id}}/ipmi")
        with self._lock:
            self._cache[machine_id] = (now, creds)
        return creds

    def forget(self, machine_id: str) -> None:
        with self._lock:
            self._cache.pop(machine_id, None)


class Lane:
    """One BMC: FIFO turn-taking, its session, its circuit."""

    def __init__(self, creds: Credentials, watchdog: Watchdog, clock: Callable[[], float]) -> None:
        self.creds = creds
        self.session = BmcSession(creds.address, creds.user, creds.password, watchdog, clock)
        self.circuit = CircuitBreaker(CIRCUIT_THRESHOLD, CIRCUIT_RESET)
        self._cond = threading.Condition()
        self._next = 0
        self._serving = 0

    @contextmanager
    def turn(self):
        with self._cond:
            ticket = self._next
            self._next += 1
            while self._serving != ticket:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._serving += 1
                self._cond.notify_all()

    def try_idle_turn(self) -> bool:
        """Take the turn only if nobody holds or waits for it (the janitor never queues)."""
        with self._cond:
            if self._serving != self._next:
                return False
            self._next += 1
            return True

    def end_idle_turn(self) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


class IpmiWorker:
    """The job handler of the ipmi stage plus its janitor. ``handle(env)`` is given to bus.JobWorker."""

    def __init__(self, settings, metal_api=None, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.rng = rng or random.Random()
        self.creds = CredentialCache(metal_api, clock=clock)
        self.budget = threading.BoundedSemaphore(settings.ipmi_concurrency)
        self.watchdog = Watchdog(clock=clock)
        self.retry = Backoff(base=0.2, cap=2.0)
        self._lanes: dict[tuple[str, int, str], Lane] = {}
        self._lanes_lock = threading.Lock()
        self._halt = threading.Event()
        self._janitor = threading.Thread(target=self._janitor_run, name="ipmi-janitor", daemon=True)
        self._janitor.start()

    # --- lanes ------------------------------------------------------------------------------------

    def lane(self, creds: Credentials) -> Lane:
        key = (creds.address.host, creds.address.port, creds.user)
        with self._lanes_lock:
            lane = self._lanes.get(key)
            if lane is None or lane.creds.password != creds.password:
                if lane is not None:
                    lane.session.drop()
                lane = self._lanes[key] = Lane(creds, self.watchdog, self.clock)
            return lane

    def lanes(self) -> list[Lane]:
        with self._lanes_lock:
            return list(self._lanes.values())

    def _janitor_run(self) -> None:
        while not self._halt.wait(1.0):
            now = self.clock()
            open_sessions = 0
            for lane in self.lanes():
                s = lane.session
                if s.connected and now - s.last_used >= IDLE_DROP and lane.try_idle_turn():
                    try:
                        s.logout()
                        M_IDLE.inc()
                    finally:
                        lane.end_idle_turn()
                open_sessions += s.connected
                self._report_health(lane, now)
            M_SESSIONS.set(open_sessions)

    def _report_health(self, lane: Lane, now: float) -> None:
        state = lane.circuit.state(now)
        M_HEALTH.labels(str(lane.creds.address)).set(
            {BreakerState.CLOSED: 1.0, BreakerState.HALF_OPEN: 0.5, BreakerState.OPEN: 0.0}[state])

    def stop(self) -> None:
        self._halt.set()
        self.watchdog.stop()
        for lane in self.lanes():
            if lane.try_idle_turn():
                try:
                    lane.session.logout()
                finally:
                    lane.end_idle_turn()

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        lanes = self.lanes()
        return {"bmcs": len(lanes), "sessions": sum(l.session.connected for l in lanes),
                "circuits_open": sum(l.circuit.state(now) is BreakerState.OPEN for l in lanes),
                "watchdog_kills": self.watchdog.kills}

    # --- jobs -------------------------------------------------------------------------------------

    def handle(self, env: Envelope) -> dict[str, Any]:
        started = self.clock()
        outcome = "failed"
        try:
            result = self._handle(env)
            outcome = "done"
            return result
        finally:
            M_COMMANDS.labels(env.name, outcome).inc()
            M_SECONDS.labels(env.name).observe(self.clock() - started)

    def _operation(self, env: Envelope) -> Callable[[Ops], dict]:
        b = env.body
        if env.name == "power":
            if b.get("state") not in POWER_STATES:
                raise failed(f"bad power job: state {b.get('state')!r} not one of {', '.join(POWER_STATES)}")
            return lambda ops: ops.power(b["state"])
        if env.name == "boot-device":
            if b.get("device") not in DEVICES:
                raise failed(f"bad boot-device job: device {b.get('device')!r} not one of {', '.join(DEVICES)}")
            persistent, efi = bool(b.get("persistent", True)), bool(b.get("efi", True))
            return lambda ops: ops.boot_device(b["device"], persistent, efi)
        if env.name == "identify":
            if not isinstance(b.get("on"), bool):
                raise failed("bad identify job: 'on' must be true or false")
            return lambda ops: ops.identify(b["on"])
        raise failed(f"unknown job {env.name!r} (jobs: {', '.join(JOB_NAMES)})")

    def _handle(self, env: Envelope) -> dict[str, Any]:
        body = env.body
        machine_id = body.get("machine_id") or env.machine_id
        if not isinstance(machine_id, str) or not machine_id:
            raise failed("job without machine_id")
        op = self._operation(env)
        log = logger.bind(machine_id=machine_id, trace_id=env.trace_id)
        creds = self.creds.get(machine_id, body.get("ipmi"))
        lane = self.lane(creds)
        started = self.clock()
        deadline = started + self.settings.ipmi_timeout
        if not lane.circuit.allow(started):
            self._report_health(lane, started)
            raise failed(f"BMC {creds.address} circuit open after {lane.circuit.consecutive_failures} failed "
                         f"jobs; next try in {lane.circuit.retry_after(started):.1f} s")
        attempts = self.settings.ipmi_attempts
        last: BmcError | None = None
        with lane.turn():
            for attempt in range(1, attempts + 1):
                # each attempt gets an equal share of what is left, so a stalled first try leaves room for more
                now = self.clock()
                share = (deadline - now) / (attempts - attempt + 1)
                ops = Ops(lane.session, self.budget, now + share, clock=self.clock)
                try:
                    logins = lane.session.logins
                    result = op(ops)
                    M_LOGINS.inc(lane.session.logins - logins)
                    lane.circuit.record_success()
                    self._report_health(lane, self.clock())
                    result.update(bmc=str(creds.address), attempts=attempt, requests=ops.requests)
                    if attempt > 1:
                        log.info("{} {} on BMC {} done at attempt {}", env.name, body, creds.address, attempt)
                    return result
                except BmcError as e:
                    last = e
                    lane.session.drop()
                    if e.auth:
                        self.creds.forget(machine_id)  # maybe rotated: fetch them again next time
                        break
                    if attempt < attempts:
                        M_RETRIES.inc()
                        pause = min(self.retry.delay(attempt, self.rng), max(0.0, deadline - self.clock()))
                        log.info("{} on BMC {} failed ({}), attempt {}/{} in {:.2f} s", env.name, creds.address,
                                 e, attempt + 1, attempts, pause)
                        if self.clock() + pause >= deadline:
                            break
                        time.sleep(pause)
        lane.circuit.record_failure(self.clock())
        self._report_health(lane, self.clock())
        log.warning("{} on BMC {} failed: {}", env.name, creds.address, last)
        raise failed(f"{env.name} on BMC {creds.address} failed: {last}")
