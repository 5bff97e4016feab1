"""The machine-event consumer: pynsq Reader on ``<partition>-machine``/``core`` through nsqlookupd, one
asyncio task per message, BMC work sent as jobs to the ipmi stage. Uses pynsq's words (STYLE lesson 6):

* FIN only when every action of the event was done and read back by the ipmi stage (and the LED state was
  booked at the Metal API); TOUCH every ``TOUCH_EVERY`` s while waiting, so nsqd does not hand the message
  to another metalcore of the partition; after a kill -9 nsqd redelivers it only once
  ``MSG_TIMEOUT`` passed (nsqd does not requeue a dead client's in-flight messages earlier);
* REQ with a jittered exponential delay (``mq_requeue_delay`` doubling to 60 s) and ``backoff=False``: one
  dead BMC must not throttle the whole reader (pynsq's reader-wide backoff would);
* past ``mq_max_attempts`` the event is given up: FIN, ``nsq.given-up`` on the bus, an error line, a metric;
* a free/reinstall is done when the machine was seen PXE booting afterwards, not when the BMC said yes: the
  PXE boot watchdog (``pxe_boot_watchdog``, policy in protocol/pxe_watchdog.py) keeps the message unfinished
  (TOUCHed) until the machine's Metal API event log shows it booting into discovery, and cycles it again
  when it does not within the window (its PXE ROM got no answer, e.g. while the pxe stage restarted);
* malformed bodies (``Poison``) and first deliveries older than ``machine_topic_ttl`` are finished at once,
  logged and counted; ``create``/``update`` events are finished and counted (nobody handled them upstream).

Exactly once at the BMC, despite kill -9 and redelivery: the job id of action ``i`` of NSQ message ``m`` is
``nsq-<m>-<i>-<k>``. The ipmi stage's journal answers a repeated job id with its first result, so a
redelivery after a crash does not cycle a machine twice. ``k`` counts failures: a failed result whose
``[at <time>]`` lies before this delivery began is a journaled failure of an earlier delivery, so we move on
to ``k+1`` (a fresh try) instead of failing again forever.

Bus events (stream "nsq"): done, requeued, given-up, poison, expired, ignored, unsupported, ``free``
({machine_id}) for every delete event (the switch stage reconciles on it), and from the watchdog
``pxe-booted``, ``pxe-watchdog`` (cycled again) and ``pxe-watchdog-given-up``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
import threading
import time
from typing import Any, Callable

import nsq
from loguru import logger

from metalcore import metrics
from metalcore.bus import JobClient, JobResult
from metalcore.protocol.backoff import Backoff
from metalcore.protocol.envelope import trace_id_for
from metalcore.protocol.machine_events import (Ignored, MachineEvent, Plan, PlanOptions, Poison, Unsupported,
                                               age_seconds, decode, is_expired, plan, pxe_cycle_plan)
from metalcore.protocol.pxe_watchdog import Step, Watchdog, booted_since, wants_pxe_boot

__all__ = ["MachineEventConsumer"]

# nsqd hands a message to another consumer only when its msg timeout passes, also when our connection died
# (kill -9): so we ask for 15 s instead of nsqd's 60 s default, and TOUCH every 5 s while a BMC works.
MSG_TIMEOUT = 15.0
TOUCH_EVERY = 5.0
OUTPUT_BUFFER_TIMEOUT_MS = 25
_FAILED_AT = re.compile(r"\[at (\d+(?:\.\d+)?)\]\s*$")
_STAGE = "nsq_consumer"
M_EVENTS = metrics.counter(_STAGE, "events_total", "Machine events by outcome", ("outcome", "event"))
M_POISON = metrics.counter(_STAGE, "poison_total", "Malformed machine events finished at once", ("reason",))
M_SECONDS = metrics.histogram(_STAGE, "event_seconds", "Receipt to FIN of a done machine event", ("event",))
M_IN_FLIGHT = metrics.gauge(_STAGE, "in_flight", "Machine events being handled")
M_WATCHDOG = metrics.counter(_STAGE, "pxe_watchdog_total", "PXE boot watchdog outcomes (booted, cycled, given_up, "
                             "interrupted)", ("outcome",))
M_TO_PXE = metrics.histogram(_STAGE, "pxe_boot_seconds", "Free/reinstall event receipt to the machine seen PXE "
                             "booting", buckets=(5, 10, 30, 60, 120, 240, 480, 900))
# Metal API and nsqd clocks are different hosts' clocks: a discovery event may carry a time a little before the
# NSQ message's timestamp although it happened after it.
CLOCK_SLACK = 2.0


class _Draining(Exception):
    """The stage is stopping while a watchdog waits: hand the message back to nsqd now."""


class _Intercept(logging.Handler):
    """pynsq logs through stdlib logging; send it to loguru (INFO and up)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, "pynsq: {}", record.getMessage())


def _route_pynsq_logs() -> None:
    log = logging.getLogger("nsq")
    if not any(isinstance(h, _Intercept) for h in log.handlers):
        log.addHandler(_Intercept())
        log.setLevel(logging.INFO)
        log.propagate = False


def lookupd_addresses(mq_address: str) -> list[str]:
    out = []
    for a in mq_address.split(","):
        a = a.strip()
        if a:
            out.append(a if "://" in a else f"http://{a}")
    return out


def _job_body(event: MachineEvent, body: dict) -> dict:
    """An ipmi job's body: the action's, the machine id, and the BMC credentials when the event has them."""
    out = {"machine_id": event.machine_id, **body}
    if event.ipmi is not None:
        out["ipmi"] = event.ipmi.to_body()
    return out


class MachineEventConsumer:
    """Start/stop from any thread; all NSQ work happens on one private asyncio loop thread."""

    def __init__(self, settings, publisher, jobs: JobClient, metal_api=None,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.publisher = publisher
        self.jobs = jobs
        self.metal_api = metal_api
        self.clock = clock
        self.rng = rng or random.Random()
        self.backoff = Backoff(base=settings.mq_requeue_delay or 0.05, cap=60.0)
        self.options = PlanOptions(reset_after_boot_device=settings.boot_device_reset)
        self.counts: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: nsq.Reader | None = None
        self._stopping: asyncio.Event | None = None
        self._draining: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nsq-consumer", daemon=True)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> "MachineEventConsumer":
        _route_pynsq_logs()
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self, drain_timeout: float = 20.0) -> None:
        """Stop taking messages (RDY 0), let running ones finish, then close; unfinished ones go back to nsqd."""
        loop = self._loop
        if loop is None or not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(drain_timeout), loop)
        try:
            fut.result(drain_timeout + 5)
        except Exception:
            logger.exception("nsq consumer did not stop cleanly")
        self._thread.join(5)

    def in_flight(self) -> int:
        return len(self._tasks)

    def stats(self) -> dict[str, Any]:
        conns = self._reader.conns if self._reader is not None else {}
        return {"events_in_flight": len(self._tasks), "nsqd_connections": len(conns), **self.counts}

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    def _reader_kwargs(self) -> dict[str, Any]:
        s = self.settings
        kw: dict[str, Any] = dict(
            topic=s.topic, channel=s.mq_channel, message_handler=self._on_message,
            lookupd_http_addresses=lookupd_addresses(s.mq_address), max_in_flight=s.mq_max_in_flight,
            max_tries=0,  # we count attempts ourselves, to publish the give-up
            lookupd_poll_interval=int(s.mq_lookupd_poll_interval), lookupd_poll_jitter=0.1,
            heartbeat_interval=5, user_agent="metalcore-nsq-consumer",
            # nsqd holds a lone message in its output buffer until this timer ticks (default 250 ms, the whole
            # latency budget); 25 ms is nsqd's --min-output-buffer-timeout default
            output_buffer_timeout=OUTPUT_BUFFER_TIMEOUT_MS, msg_timeout=MSG_TIMEOUT)
        if s.mq_ca_cert_file:
            opts: dict[str, Any] = {"ca_certs": s.mq_ca_cert_file, "cert_reqs": ssl.CERT_REQUIRED}
            if s.mq_client_cert_file:
                opts["certfile"] = s.mq_client_cert_file
            kw.update(tls_v1=True, tls_options=opts)
        return kw

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._draining = asyncio.Event()
        self._reader = nsq.Reader(**self._reader_kwargs())
        logger.info("consuming {}/{} through nsqlookupd {}", self.settings.topic, self.settings.mq_channel,
                    self.settings.mq_address)
        self._ready.set()
        await self._stopping.wait()

    async def _shutdown(self, drain_timeout: float) -> None:
        reader = self._reader
        if self._draining is not None:
            self._draining.set()  # watchdogs waiting for a boot requeue their message at once
        if reader is not None:
            try:
                reader.set_max_in_flight(0)  # RDY 0 everywhere: no new messages
            except Exception:
                pass
        deadline = time.monotonic() + drain_timeout
        while self._tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._tasks:
            logger.warning("{} machine events unfinished after {:.0f} s drain; nsqd delivers them again",
                           len(self._tasks), drain_timeout)
            for t in list(self._tasks):
                t.cancel()
        if reader is not None:
            reader.close()
        await asyncio.sleep(0.1)  # let the closes go out
        self._stopping.set()

    # --- messages ---------------------------------------------------------------------------------

    def _count(self, outcome: str, event: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        M_EVENTS.labels(outcome, event).inc()

    def _on_message(self, message: nsq.Message) -> None:
        message.enable_async()
        task = asyncio.get_running_loop().create_task(self._process(message))
        self._tasks.add(task)
        M_IN_FLIGHT.set(len(self._tasks))

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            M_IN_FLIGHT.set(len(self._tasks))
        task.add_done_callback(done)

    @staticmethod
    def _respond(message: nsq.Message, how: str, **kw) -> None:
        """FIN/REQ/TOUCH; the connection may be gone (nsqd restarted): nsqd then redelivers by itself."""
        try:
            if how == "touch":
                if not message.has_responded():
                    message.touch()
            elif not message.has_responded():
                getattr(message, how)(**kw)
        except Exception as e:
            logger.info("could not {} message {} ({}: {}); nsqd will redeliver it", how, message.id,
                        type(e).__name__, e)

    async def _process(self, message: nsq.Message) -> None:
        received = self.clock()
        t0 = time.monotonic()
        nsq_id = message.id.decode() if isinstance(message.id, bytes) else str(message.id)
        decoded = decode(bytes(message.body))
        if isinstance(decoded, Poison):
            logger.warning("machine event {} is malformed ({}: {}); finished without action", nsq_id,
                           decoded.reason, decoded.detail)
            M_POISON.labels(str(decoded.reason)).inc()
            self._count("poison", "?")
            self.publisher.publish("nsq", "poison", {"nsq_id": nsq_id, "reason": str(decoded.reason),
                                                     "detail": decoded.detail})
            self._respond(message, "finish")
            return
        if isinstance(decoded, Ignored):
            self._count("ignored", decoded.type)
            self.publisher.publish("nsq", "ignored", {"nsq_id": nsq_id, "type": decoded.type},
                                   machine_id=decoded.machine_id or None)
            self._respond(message, "finish")
            return
        event: MachineEvent = decoded
        mid = event.machine_id
        trace = trace_id_for(mid)
        log = logger.bind(machine_id=mid, trace_id=trace)
        if is_expired(message.timestamp, received, self.settings.machine_topic_ttl, message.attempts):
            age = age_seconds(message.timestamp, received)
            log.warning("machine event {} {} is {:.1f} s old (ttl {:.0f} s); dropped", nsq_id, event.label, age,
                        self.settings.machine_topic_ttl)
            self._count("expired", event.label)
            self.publisher.publish("nsq", "expired", {"nsq_id": nsq_id, "event": event.label, "age": round(age, 3)},
                                   machine_id=mid, trace_id=trace)
            self._respond(message, "finish")
            return
        if event.type == "delete":
            # the switch stage puts the machine's ports back into the PXE VLAN on this trigger
            self.publisher.publish("nsq", "free", {"machine_id": mid, "nsq_id": nsq_id}, machine_id=mid,
                                   trace_id=trace)
        p = plan(event, self.options)
        if isinstance(p, Unsupported):
            log.warning("machine event {} {}: {}; finished", nsq_id, p.command, p.reason)
            self._count("unsupported", event.label)
            self.publisher.publish("nsq", "unsupported", {"nsq_id": nsq_id, "event": event.label,
                                                          "reason": p.reason}, machine_id=mid, trace_id=trace)
            self._respond(message, "finish")
            return
        error = await self._execute(message, nsq_id, event, p, received, trace)
        if error is None and self.settings.pxe_boot_watchdog > 0 and wants_pxe_boot(p):
            try:
                error = await self._watch_pxe_boot(message, nsq_id, event, received, trace)
            except _Draining:
                M_WATCHDOG.labels("interrupted").inc()
                log.info("machine event {} {}: stage stopping while waiting for the PXE boot; back to nsqd",
                         nsq_id, event.label)
                self._respond(message, "requeue", time_ms=0, backoff=False)
                return
        attempts = message.attempts
        if error is None:
            seconds = time.monotonic() - t0
            M_SECONDS.labels(event.label).observe(seconds)
            self._count("done", event.label)
            self.publisher.publish("nsq", "done", {"nsq_id": nsq_id, "event": event.label, "attempts": attempts,
                                                   "seconds": round(seconds, 6),
                                                   "actions": [a.describe() for a in p.actions]},
                                   machine_id=mid, trace_id=trace)
            # the "done" event leaves before the FIN: a consumer killed between the two redelivers the
            # message (a harmless repeat) instead of finishing it without anyone having seen it done
            await asyncio.get_running_loop().run_in_executor(None, self.publisher.flush, 1.0)
            self._respond(message, "finish")
            return
        if attempts >= self.settings.mq_max_attempts:
            log.error("machine event {} {} given up after {} attempts: {}", nsq_id, event.label, attempts, error)
            self._count("given_up", event.label)
            self.publisher.publish("nsq", "given-up", {"nsq_id": nsq_id, "event": event.label,
                                                       "attempts": attempts, "error": error},
                                   machine_id=mid, trace_id=trace)
            self._respond(message, "finish")
            return
        delay = self.backoff.delay(attempts, self.rng)
        log.warning("machine event {} {} failed (attempt {}/{}): {}; requeued in {:.1f} s", nsq_id, event.label,
                    attempts, self.settings.mq_max_attempts, error, delay)
        self._count("requeued", event.label)
        self.publisher.publish("nsq", "requeued", {"nsq_id": nsq_id, "event": event.label, "attempts": attempts,
                                                   "delay": round(delay, 3), "error": error},
                               machine_id=mid, trace_id=trace)
        # pynsq 0.9.1 takes time_ms (an unknown "delay" kwarg is silently ignored and it falls back to
        # requeue_delay * attempts = 90 s per attempt); backoff=False: do not slow the whole reader for one BMC
        self._respond(message, "requeue", time_ms=int(delay * 1000), backoff=False)

    async def _execute(self, message: nsq.Message, nsq_id: str, event: MachineEvent, p: Plan,
                       received: float, trace: str) -> str | None:
        """Run the actions in order; None when all are done, else why not."""
        for i, action in enumerate(p.actions):
            if action.kind == "led-state":
                error = await self._led_state(event.machine_id, action.body)
            else:
                error = await self._job(message, nsq_id, i, action.kind, _job_body(event, action.body), received,
                                        trace)
            if error is not None:
                return f"{action.describe()}: {error}"
        return None

    async def _job(self, message: nsq.Message, nsq_id: str, index: int, name: str, body: dict,
                   received: float, trace: str) -> str | None:
        for k in range(self.settings.mq_max_attempts * 4 + 8):
            job_id = f"nsq-{nsq_id}-{index}-{k}"
            fut = self.jobs.submit(name, body, job_id=job_id, machine_id=body["machine_id"], trace_id=trace)
            result = await self._await_touching(message, fut, self.settings.job_timeout)
            if result is None:
                self.jobs.cancel(job_id)
                return f"the ipmi stage did not answer within {self.settings.job_timeout:.0f} s"
            if result.ok:
                return None
            m = _FAILED_AT.search(result.error or "")
            if m and float(m.group(1)) < received:
                continue  # a failure an earlier delivery already saw (journal replay): try afresh
            return result.error or "failed"
        return "too many failed tries of one action"

    async def _await_touching(self, message: nsq.Message, fut, timeout: float) -> JobResult | None:
        afut = asyncio.wrap_future(fut)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                return await asyncio.wait_for(asyncio.shield(afut), min(TOUCH_EVERY, left))
            except asyncio.TimeoutError:
                self._respond(message, "touch")
            except asyncio.CancelledError:
                if afut.cancelled():
                    return None
                raise

    async def _watch_pxe_boot(self, message: nsq.Message, nsq_id: str, event: MachineEvent, received: float,
                              trace: str) -> str | None:
        """Hold the event until the machine is seen booting into discovery; cycle it again when it is not."""
        s, mid = self.settings, event.machine_id
        log = logger.bind(machine_id=mid, trace_id=trace)
        since = message.timestamp / 1e9 - CLOCK_SLACK
        wd = Watchdog(window=s.pxe_boot_watchdog, cycles=s.pxe_boot_watchdog_cycles, started=time.monotonic())
        poll = min(5.0, max(0.5, s.pxe_boot_watchdog / 30))
        loop = asyncio.get_running_loop()
        while True:
            self._respond(message, "touch")  # the Metal API may answer slowly
            seen = await loop.run_in_executor(None, self._booted_since, mid, since, log)
            step = wd.step(time.monotonic(), seen)
            if step is Step.DONE:
                took = self.clock() - received
                M_WATCHDOG.labels("booted").inc()
                M_TO_PXE.observe(max(0.0, took))
                self.publisher.publish("nsq", "pxe-booted", {"nsq_id": nsq_id, "event": event.label,
                                                             "extra_cycles": wd.cycled, "seconds": round(took, 3)},
                                       machine_id=mid, trace_id=trace)
                return None
            if step is Step.GIVE_UP:
                M_WATCHDOG.labels("given_up").inc()
                log.error("machine {} was not seen PXE booting after {} extra power cycles ({:.0f} s each); "
                          "it may have booted from its disk: look at its console", mid, wd.cycled, wd.window)
                self.publisher.publish("nsq", "pxe-watchdog-given-up", {"nsq_id": nsq_id, "event": event.label,
                                                                        "extra_cycles": wd.cycled},
                                       machine_id=mid, trace_id=trace)
                return None  # the event's own actions were done; holding it longer helps nobody
            if step is Step.CYCLE:
                n = wd.cycled + 1
                M_WATCHDOG.labels("cycled").inc()
                log.warning("machine {} not seen PXE booting {:.0f} s after its power cycle; PXE + cycle again "
                            "({}/{})", mid, wd.window, n, wd.cycles)
                self.publisher.publish("nsq", "pxe-watchdog", {"nsq_id": nsq_id, "event": event.label, "cycle": n,
                                                               "window": wd.window}, machine_id=mid, trace_id=trace)
                for k, action in enumerate(pxe_cycle_plan().actions):
                    error = await self._job(message, nsq_id, f"wd{n}.{k}", action.kind,
                                            _job_body(event, action.body), received, trace)
                    if error is not None:
                        return f"PXE boot watchdog, cycle {n}: {action.describe()}: {error}"
                wd.cycled_at(time.monotonic())
                continue
            await self._sleep_touching(message, poll)

    def _booted_since(self, machine_id: str, since: float, log) -> bool | None:
        if self.metal_api is None:
            return None
        try:
            return booted_since(self.metal_api.get_machine(machine_id), since)
        except Exception as e:  # Metal API down or slow: unknown, never a reason to cycle
            log.info("PXE boot watchdog: cannot read machine {} from the Metal API ({}: {})", machine_id,
                     type(e).__name__, e)
            return None

    async def _sleep_touching(self, message: nsq.Message, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(self._draining.wait(), min(TOUCH_EVERY, left))
            except asyncio.TimeoutError:
                self._respond(message, "touch")
                continue
            raise _Draining()
        if self._draining.is_set():
            raise _Draining()

    async def _led_state(self, machine_id: str, body: dict) -> str | None:
        if self.metal_api is None:
            return "no Metal API client"
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.metal_api.set_chassis_identify_led_state, machine_id, body)
        except Exception as e:  # MetalAPIError/Unavailable: requeue, the identify job answers from the journal
            return f"metal-api chassis-identify-led-state: {e}"
        return None
