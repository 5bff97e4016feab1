"""The local bus between stages: ZeroMQ over ipc:// sockets in the run directory.

Streams (PUB/SUB, lossy by design: a slow subscriber loses messages, a publisher never waits):
    each stage binds ``events-<stage>.sock`` and publishes ``[b"<stream>.<name>", envelope]``.
    Streams: dhcp, boot, hammer, nsq, switch, ipmi, heartbeat (one per stage per second), bus.
    Subscribers (other stages, ``metalcore tap``, ``metalcore status``) connect to every stage's socket.

Jobs (DEALER -> ROUTER, at-least-once with harmless repeats):
    a worker stage binds ``jobs-<stage>.sock``. A sender keeps each job until its result arrives:
    - the worker acks a job on receipt; a job not acked within ACK_TIMEOUT is sent again;
    - the sender pings every HEARTBEAT_INTERVAL; the pong carries the worker's instance id, and when that
      id changes (the worker restarted, e.g. `supervisorctl restart` or kill -9) every unfinished job is
      sent again;
    - the worker remembers finished job ids with their results in a small journal in the run directory,
      so a job sent again after its result was lost is answered from the journal, not done twice; a job
      that is running when it arrives again is not started twice either.
    A repeat can still reach the handler when the worker died between doing a job and journaling it:
    handlers state target states ("power on", "boot device pxe"), so that repeat is harmless.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import stat
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import zmq
from loguru import logger

from metalcore.config import STAGES
from metalcore.protocol.envelope import BadEnvelope, Envelope, decode, encode, new_id

HEARTBEAT_INTERVAL = 1.0
ACK_TIMEOUT = 1.0
# A peer that missed this many heartbeats is reported gone.
HEARTBEAT_MISSES = 3
PUB_HWM = 10000
# A tap or status reader keeps little: when it falls behind, ZeroMQ drops at its side, not the stage's.
TAP_HWM = 1000
JOURNAL_KEEP = 50000
RECORD_MAX_BYTES = 64 << 20
RECORD_FLUSH_INTERVAL = 0.2
RECORD_BUFFER_BYTES = 256 << 10
# The publisher's sender thread collects events this long before it sends a batch (bus latency ≤ this).
SEND_BATCH_PAUSE = 0.002


def prepare_run_dir(run_dir: str) -> str:
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    os.chmod(run_dir, 0o700)
    return run_dir


def events_endpoint(run_dir: str, stage: str) -> str:
    return f"ipc://{os.path.join(run_dir, f'events-{stage}.sock')}"


def jobs_endpoint(run_dir: str, stage: str) -> str:
    return f"ipc://{os.path.join(run_dir, f'jobs-{stage}.sock')}"


def _bind_private(sock: zmq.Socket, endpoint: str) -> None:
    path = endpoint[len("ipc://"):]
    if os.path.exists(path):
        os.unlink(path)  # a stale socket of a killed predecessor
    sock.bind(endpoint)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)


def _decode_or_log(frames: list[bytes], where: str) -> Envelope | None:
    try:
        return decode(frames)
    except BadEnvelope as e:
        logger.warning("dropped a bad bus message on {}: {}", where, e)
        return None


# --- streams -------------------------------------------------------------------------------------------

class EventRecord:
    """Every event a stage publishes (heartbeats aside) also goes, as one JSON line, into
    ``<run_dir>/events-<stage>.jsonl``: `metalcore trace` reads a machine's timeline from these files, even
    for a time when no tap was listening. The file is rotated once at RECORD_MAX_BYTES (one old copy).

    Writes are buffered: the file is flushed when the oldest unflushed line is RECORD_FLUSH_INTERVAL old
    (checked on each write, and by the publisher's thread when it is idle, see :meth:`due`), on close,
    and when the buffer fills. A flush per event was a syscall on every forwarded hammer request. A stage
    killed with -9 can lose its last fraction of a second of record (the live bus had those at once)."""

    def __init__(self, run_dir: str, stage: str, flush_interval: float = RECORD_FLUSH_INTERVAL) -> None:
        self.path = os.path.join(run_dir, f"events-{stage}.jsonl")
        self.flush_interval = flush_interval
        self._f = open(self.path, "ab", buffering=RECORD_BUFFER_BYTES)
        self._lock = threading.Lock()
        self._dirty_since: float | None = None

    def write(self, payload: bytes) -> None:
        with self._lock:
            if self._f.closed:
                return
            self._f.write(payload + b"\n")
            now = time.monotonic()
            if self._dirty_since is None:
                self._dirty_since = now
            elif now - self._dirty_since >= self.flush_interval:
                self._flush_locked()
            if self._f.tell() > RECORD_MAX_BYTES:
                self._f.close()
                os.replace(self.path, self.path + ".1")
                self._f = open(self.path, "ab", buffering=RECORD_BUFFER_BYTES)
                self._dirty_since = None

    def due(self) -> float | None:
        """Seconds until the buffered lines must be flushed (0: now), None when nothing is buffered."""
        since = self._dirty_since
        return None if since is None else max(0.0, since + self.flush_interval - time.monotonic())

    def _flush_locked(self) -> None:
        self._f.flush()
        self._dirty_since = None

    def flush(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._flush_locked()

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.close()
            self._dirty_since = None


_STOP = object()


class EventPublisher:
    """Publishes events of one stage. Thread-safe; never blocks (drops beyond PUB_HWM queued events, and
    PUB drops at its high-water mark).

    ``publish`` encodes the envelope in the caller's thread (so a bad one raises there, and a body
    changed afterwards is not what was sent) and hands the frames to one sender thread, which owns the
    ZeroMQ socket and the record file. Why a thread and not a lock around the socket: a ZeroMQ send and
    a file write release the GIL while the lock is held, and with a hundred request threads publishing
    (the hammer proxy) they queued up on that lock; the hammer proxy's throughput at 128 clients went
    from ≈ 400 to ≈ 1,100 requests/s without that convoy (docs/benchmarks-hammer.md)."""

    def __init__(self, run_dir: str, stage: str, clock: Callable[[], float] = time.time,
                 record: bool = True) -> None:
        self.stage = stage
        self.clock = clock
        self._lock = threading.Lock()
        self._record = EventRecord(prepare_run_dir(run_dir), stage) if record else None
        self._sock = zmq.Context.instance().socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, PUB_HWM)
        self._sock.setsockopt(zmq.LINGER, 0)
        _bind_private(self._sock, events_endpoint(prepare_run_dir(run_dir), stage))
        self.published = 0
        self.dropped = 0
        self._closed = False
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # the socket is handed to this thread here and used by no other from now on (thread start is the
        # memory barrier ZeroMQ asks for when a socket changes threads)
        self._sender = threading.Thread(target=self._run, name=f"publisher-{stage}", daemon=True)
        self._sender.start()

    def publish(self, stream: str, name: str, body: dict[str, Any] | None = None, *, machine_id: str | None = None,
                mac: str | None = None, trace_id: str | None = None, kind: str = "event") -> Envelope:
        env = Envelope(kind=kind, stream=stream, name=name, body=body or {}, ts=self.clock(), source=self.stage,
                       machine_id=machine_id, mac=mac, trace_id=trace_id)
        self.send(env)
        return env

    def send(self, env: Envelope) -> None:
        frames = encode(env)
        if self._closed:
            return
        if self._queue.qsize() >= PUB_HWM:
            self.dropped += 1  # the sender fell that far behind: lossy, like PUB itself
            return
        self._queue.put((frames, env.stream != "heartbeat"))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything published so far was handed to ZeroMQ and written to the record."""
        done = threading.Event()
        if self._closed:
            return True
        self._queue.put(done)
        return done.wait(timeout)

    def _run(self) -> None:
        q, record, sock = self._queue, self._record, self._sock
        try:
            while True:
                due = record.due() if record is not None else None
                if q.empty():
                    # pause between batches: while this thread sleeps instead of waiting on the queue, a
                    # put wakes nobody, so a busy stage pays one wake-up per batch, not one per event
                    time.sleep(SEND_BATCH_PAUSE)
                try:
                    item = q.get(timeout=due) if due is not None else q.get()
                except queue.Empty:
                    try:
                        record.flush()  # type: ignore[union-attr]
                    except OSError as e:
                        logger.warning("could not flush {}: {}", record.path, e)  # type: ignore[union-attr]
                    continue
                if item is _STOP:
                    break
                if isinstance(item, threading.Event):
                    try:
                        if record is not None:
                            record.flush()
                    except OSError as e:
                        logger.warning("could not flush {}: {}", record.path, e)  # type: ignore[union-attr]
                    item.set()
                    continue
                frames, recorded = item
                if record is not None and recorded:
                    try:
                        record.write(frames[1])
                    except OSError as e:  # disk full and the like: the live bus still works
                        logger.warning("could not record a bus event in {}: {}", record.path, e)
                try:
                    sock.send_multipart(frames, flags=zmq.NOBLOCK)
                    self.published += 1
                except zmq.Again:
                    pass
        finally:
            sock.close(linger=0)
            if record is not None:
                record.close()

    def close(self) -> None:
        """Send what is queued, then close the socket and the record."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)
        self._sender.join(10)


class EventSubscriber:
    """Receives events of the given streams from every stage (or the given ones)."""

    def __init__(self, run_dir: str, streams: Iterable[str] = (), stages: Iterable[str] = STAGES,
                 hwm: int = TAP_HWM) -> None:
        self._sock = zmq.Context.instance().socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        streams = list(streams)
        for s in streams or [""]:
            self._sock.setsockopt(zmq.SUBSCRIBE, (s + ".").encode() if s else b"")
        for stage in stages:
            self._sock.connect(events_endpoint(run_dir, stage))
        self.dropped_bad = 0

    def recv(self, timeout: float | None = None) -> Envelope | None:
        if timeout is not None and not self._sock.poll(int(timeout * 1000)):
            return None
        env = _decode_or_log(self._sock.recv_multipart(), "events")
        if env is None:
            self.dropped_bad += 1
        return env

    def __iter__(self) -> Iterator[Envelope]:
        while True:
            env = self.recv()
            if env is not None:
                yield env

    def close(self) -> None:
        self._sock.close(linger=0)


class Heartbeat(threading.Thread):
    """Publishes ``heartbeat.<stage>`` every interval with the stage's vital signs."""

    def __init__(self, publisher: EventPublisher, stats: Callable[[], dict[str, Any]],
                 interval: float = HEARTBEAT_INTERVAL) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.publisher, self.stats, self.interval = publisher, stats, interval
        self.started_at = time.time()
        self._halt = threading.Event()  # not `_stop`: threading.Thread has a method of that name

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                body = {"pid": os.getpid(), "started": self.started_at, **self.stats()}
                self.publisher.publish("heartbeat", self.publisher.stage, body)
            except Exception:  # a broken stats callback must not stop the heartbeat thread
                logger.exception("heartbeat stats failed")
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()


# --- jobs: the sender side -------------------------------------------------------------------------------

@dataclass
class JobResult:
    ok: bool
    body: dict[str, Any]
    error: str | None = None
    job_id: str = ""


class JobTimeout(TimeoutError):
    pass


@dataclass
class _Pending:
    env: Envelope
    future: concurrent.futures.Future
    sent_at: float = 0.0
    acked: bool = False
    sends: int = 0


class JobClient:
    """Sends jobs to one worker stage and resolves a Future per job with its JobResult.

    Thread-safe: ``submit`` may be called from any thread; one background thread owns the socket.
    """

    def __init__(self, run_dir: str, worker: str, source: str, publisher: EventPublisher | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.worker, self.source, self.clock = worker, source, clock
        self.publisher = publisher
        self._ctx = zmq.Context.instance()
        self._endpoint = jobs_endpoint(run_dir, worker)
        self._wake_endpoint = f"inproc://jobclient-{uuid.uuid4().hex}"
        self._submits: queue.Queue = queue.Queue()
        self._cancels: queue.Queue = queue.Queue()
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._stop = threading.Event()
        self.worker_instance: str | None = None
        self.last_pong: float = 0.0
        self.resent = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"jobs->{worker}", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    @property
    def worker_alive(self) -> bool:
        return self.last_pong > 0 and self.clock() - self.last_pong < HEARTBEAT_INTERVAL * HEARTBEAT_MISSES

    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def submit(self, name: str, body: dict[str, Any], *, job_id: str | None = None, machine_id: str | None = None,
               mac: str | None = None, trace_id: str | None = None) -> concurrent.futures.Future:
        env = Envelope(kind="job", stream=self.worker, name=name, body=body, id=job_id or new_id(),
                       ts=time.time(), source=self.source, machine_id=machine_id, mac=mac, trace_id=trace_id)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            existing = self._pending.get(env.id)
            if existing is not None:  # the same job asked for twice: one send, one result
                return existing.future
            self._pending[env.id] = _Pending(env, fut)
        self._submits.put(env.id)
        self._wake()
        return fut

    def call(self, name: str, body: dict[str, Any], timeout: float, **kw) -> JobResult:
        """Submit and wait; on timeout the job is dropped from the pending set and JobTimeout raised."""
        fut = self.submit(name, body, **kw)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            job_id = next((p.env.id for p in list(self._pending.values()) if p.future is fut), None)
            if job_id:
                self.cancel(job_id)
            raise JobTimeout(f"{self.worker} did not finish {name} within {timeout:.0f} s") from None

    def cancel(self, job_id: str) -> None:
        """Forget a job (its result, if it comes, is ignored)."""
        with self._lock:
            p = self._pending.pop(job_id, None)
        if p is not None and not p.future.done():
            p.future.cancel()

    def close(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(5)

    def _wake(self) -> None:
        sock = getattr(self._local, "wake", None)
        if sock is None:
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self._wake_endpoint)
            self._local.wake = sock
        try:
            sock.send(b"", flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # the loop is already awake with a full queue

    def _run(self) -> None:
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDHWM, 100000)
        dealer.setsockopt(zmq.RCVHWM, 100000)
        dealer.connect(self._endpoint)
        wake = self._ctx.socket(zmq.PULL)
        wake.bind(self._wake_endpoint)
        self._ready.set()
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        next_ping = 0.0
        try:
            while not self._stop.is_set():
                now = self.clock()
                if now >= next_ping:
                    self._send(dealer, Envelope(kind="ping", stream=self.worker, name="ping", ts=time.time(),
                                                source=self.source))
                    next_ping = now + HEARTBEAT_INTERVAL
                    self._resend_unacked(dealer, now)
                timeout = max(0.0, min(next_ping, now + ACK_TIMEOUT / 2) - self.clock())
                for sock, _ in poller.poll(int(timeout * 1000) + 1):
                    if sock is wake:
                        while True:
                            try:
                                wake.recv(flags=zmq.NOBLOCK)
                            except zmq.Again:
                                break
                        self._send_submitted(dealer)
                    else:
                        while True:
                            try:
                                frames = dealer.recv_multipart(flags=zmq.NOBLOCK)
                            except zmq.Again:
                                break
                            env = _decode_or_log(frames, f"jobs-{self.worker}")
                            if env is not None:
                                self._on_reply(dealer, env)
        finally:
            dealer.close(linger=0)
            wake.close(linger=0)

    def _send(self, dealer: zmq.Socket, env: Envelope) -> bool:
        try:
            dealer.send_multipart(encode(env), flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _send_job(self, dealer: zmq.Socket, p: _Pending) -> None:
        if self._send(dealer, p.env):
            p.sent_at = self.clock()
            p.sends += 1

    def _send_submitted(self, dealer: zmq.Socket) -> None:
        while True:
            try:
                job_id = self._submits.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                p = self._pending.get(job_id)
            if p is not None and p.sends == 0:
                self._send_job(dealer, p)

    def _resend_unacked(self, dealer: zmq.Socket, now: float) -> None:
        with self._lock:
            stale = [p for p in self._pending.values() if not p.acked and now - p.sent_at >= ACK_TIMEOUT]
        for p in stale:
            if p.sends:
                self.resent += 1
            self._send_job(dealer, p)

    def _on_reply(self, dealer: zmq.Socket, env: Envelope) -> None:
        if env.kind == "pong":
            instance = env.body.get("instance")
            self.last_pong = self.clock()
            if instance != self.worker_instance:
                if self.worker_instance is not None:
                    logger.info("{} restarted (instance {}): resending unfinished jobs", self.worker, instance)
                    with self._lock:
                        pending = list(self._pending.values())
                    for p in pending:
                        p.acked = False
                        self.resent += 1
                        self._send_job(dealer, p)
                self.worker_instance = instance
            return
        with self._lock:
            p = self._pending.get(env.id)
            if p is None:
                return  # a late duplicate or a cancelled job
            if env.kind == "ack":
                p.acked = True
                return
            if env.kind != "result":
                return
            del self._pending[env.id]
        body = env.body
        result = JobResult(ok=bool(body.get("ok")), body=body.get("result") or {}, error=body.get("error"),
                           job_id=env.id)
        if not p.future.done():
            p.future.set_result(result)


# --- jobs: the worker side -------------------------------------------------------------------------------

class JobFailed(Exception):
    """A handler's way to say a job did not do what it asked; the message goes back to the sender."""


class Journal:
    """Finished job ids and their results, appended to a file so a restarted worker still knows them."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.done: dict[str, dict[str, Any]] = {}
        if os.path.exists(path):
            with open(path, "rb") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self.done[rec["id"]] = rec["reply"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a line torn by kill -9: that job simply runs again
            if len(self.done) > JOURNAL_KEEP:
                keep = list(self.done.items())[-JOURNAL_KEEP // 2:]
                self.done = dict(keep)
                tmp = path + ".tmp"
                with open(tmp, "w") as f:
                    for k, v in keep:
                        f.write(json.dumps({"id": k, "reply": v}) + "\n")
                os.replace(tmp, path)
        self._lock = threading.Lock()
        self._f = open(path, "a", buffering=1)

    def add(self, job_id: str, reply: dict[str, Any]) -> None:
        line = json.dumps({"id": job_id, "reply": reply}) + "\n"
        with self._lock:
            self.done[job_id] = reply
            self._f.write(line)

    def close(self) -> None:
        self._f.close()


Handler = Callable[[Envelope], dict[str, Any]]


class JobWorker:
    """Serves jobs for one stage: ``handler(envelope) -> result dict`` (raise JobFailed to fail a job).

    Handlers run on a thread pool of ``concurrency`` threads; the loop thread owns the socket.
    """

    def __init__(self, run_dir: str, stage: str, handler: Handler, concurrency: int = 16,
                 publisher: EventPublisher | None = None) -> None:
        self.stage, self.handler, self.publisher = stage, handler, publisher
        self.instance = uuid.uuid4().hex
        self._ctx = zmq.Context.instance()
        self._endpoint = jobs_endpoint(prepare_run_dir(run_dir), stage)
        self._results_endpoint = f"inproc://jobworker-{self.instance}"
        self.journal = Journal(os.path.join(run_dir, f"jobs-{stage}.journal"))
        self._pool = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix=f"{stage}-job")
        self._running: dict[str, tuple[Envelope, list[bytes]]] = {}
        self._local = threading.local()
        self._stop = threading.Event()
        self._accepting = True
        self.done_count = 0
        self.failed_count = 0
        self.repeats_answered = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"jobs-{stage}", daemon=True)

    def start(self) -> "JobWorker":
        self._thread.start()
        self._ready.wait(5)
        return self

    def in_flight(self) -> int:
        return len(self._running)

    def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop taking jobs, let running ones finish (up to drain_timeout) and send their results."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout
        while self._running and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._running:
            logger.warning("{} jobs still running after {:.0f} s drain; their senders will resend them",
                           len(self._running), drain_timeout)
        self._stop.set()
        self._thread.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.journal.close()

    def _run(self) -> None:
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 1000)
        router.setsockopt(zmq.SNDHWM, 100000)
        router.setsockopt(zmq.RCVHWM, 100000)
        _bind_private(router, self._endpoint)
        results = self._ctx.socket(zmq.PULL)
        results.bind(self._results_endpoint)
        self._ready.set()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(results, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                for sock, _ in poller.poll(100):
                    if sock is results:
                        self._drain_results(router, results)
                    else:
                        self._drain_requests(router)
            self._drain_results(router, results)
        finally:
            router.close()
            results.close(linger=0)

    def _reply(self, router: zmq.Socket, identity: bytes, env: Envelope, kind: str, body: dict[str, Any]) -> None:
        reply = env.reply(kind, body, ts=time.time(), source=self.stage)
        try:
            router.send_multipart([identity] + encode(reply), flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the sender is gone or full; it resends what it still wants

    def _drain_requests(self, router: zmq.Socket) -> None:
        while True:
            try:
                frames = router.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, rest = frames[0], frames[1:]
            env = _decode_or_log(rest, f"jobs-{self.stage}")
            if env is None:
                continue
            if env.kind == "ping":
                self._reply(router, identity, env, "pong", {"instance": self.instance,
                                                            "in_flight": len(self._running)})
            elif env.kind == "job":
                self._on_job(router, identity, env)
            else:
                logger.warning("dropped a {} message on jobs-{}: not a job", env.kind, self.stage)

    def _on_job(self, router: zmq.Socket, identity: bytes, env: Envelope) -> None:
        done = self.journal.done.get(env.id)
        if done is not None:
            self.repeats_answered += 1
            self._reply(router, identity, env, "result", done)
            return
        running = self._running.get(env.id)
        if running is not None:
            running[1].append(identity)
            self._reply(router, identity, env, "ack", {})
            return
        if not self._accepting:
            return  # draining: no ack, so the sender resends to our successor
        self._running[env.id] = (env, [identity])
        self._reply(router, identity, env, "ack", {})
        self._pool.submit(self._execute, env)

    def _execute(self, env: Envelope) -> None:
        log = logger.bind(machine_id=env.machine_id, mac=env.mac, trace_id=env.trace_id)
        started = time.monotonic()
        try:
            reply = {"ok": True, "result": self.handler(env) or {}}
        except JobFailed as e:
            reply = {"ok": False, "error": str(e)}
        except Exception as e:  # a handler bug fails the job, never the worker
            log.exception("job {} {} crashed", env.name, env.id)
            reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
        reply["seconds"] = round(time.monotonic() - started, 6)
        # journal here, right after the effect, not later in the loop thread: a kill -9 between the two
        # is what would make a resent job run twice, so that window is kept to microseconds
        self.journal.add(env.id, reply)
        sock = getattr(self._local, "push", None)
        if sock is None:
            sock = self._ctx.socket(zmq.PUSH)
            sock.connect(self._results_endpoint)
            self._local.push = sock
        sock.send_multipart([env.id.encode(), json.dumps(reply).encode()])

    def _drain_results(self, router: zmq.Socket, results: zmq.Socket) -> None:
        while True:
            try:
                job_id, raw = results.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            reply = json.loads(raw)
            env, identities = self._running.pop(job_id.decode())
            if reply["ok"]:
                self.done_count += 1
            else:
                self.failed_count += 1
            for identity in identities:
                self._reply(router, identity, env, "result", reply)
            if self.publisher is not None:
                self.publisher.publish(self.stage, f"job-{'done' if reply['ok'] else 'failed'}",
                                       {"job": env.id, "name": env.name, "seconds": reply["seconds"],
                                        "error": reply.get("error"), "from": env.source},
                                       machine_id=env.machine_id, mac=env.mac, trace_id=env.trace_id)
