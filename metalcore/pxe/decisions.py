"""The boot decision as the packet loop needs it: never blocking, one Metal API question per MAC at a time;
and what follows an answered boot: one ``PXE Booting`` event per boot attempt and boot-loop detection.

The decision itself is :class:`metalcore.boot.BootDecider` (shared with the hammer proxy); this file only
puts a non-blocking front on it. A DISCOVER from a MAC without a fresh decision is parked, the question
runs on a small pool, and the parked reply is sent from there once the answer is "discovery" (iPXE and
PXE ROMs retransmit anyway, so nothing is lost while the Metal API thinks).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from loguru import logger

from metalcore.boot import Decision, Verdict
from metalcore.protocol.bootloop import BootLoopDetector
from metalcore.protocol.pxe import ClientInfo
from metalcore.pxe.metrics import PxeMetrics

__all__ = ["DecisionGate", "BootTracker", "PXE_BOOTING"]

PXE_BOOTING = "PXE Booting"  # metal-api ProvisioningEventType (metal-contracts.md §1.3)
# Verdicts the BootDecider does not cache ("could not ask"): the gate keeps them this long only, so a
# retry storm while the Metal API is down does not queue one question per packet.
UNCACHED_HOLD = 1.0
MAX_PARKED_PER_MAC = 4


class DecisionGate:
    """Thread-safe. ``get`` answers from memory; ``ask`` runs the decider on the pool and calls back."""

    def __init__(self, decider: Any, ttl: float, metrics: PxeMetrics, *, workers: int = 8,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.decider = decider
        self.ttl = ttl
        self.metrics = metrics
        self.clock = clock
        self._lock = threading.Lock()
        self._fresh: dict[str, tuple[float, Decision]] = {}
        self._inflight: dict[str, list[Callable[[Decision], None]]] = {}
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="pxe-decide")
        self.asked = 0

    def get(self, mac: str) -> Decision | None:
        entry = self._fresh.get(mac)  # dict read is atomic under the GIL: no lock on the hot path
        if entry is None or entry[0] <= self.clock():
            return None
        return entry[1]

    def ask(self, mac: str, then: Callable[[Decision], None] | None = None) -> None:
        with self._lock:
            waiting = self._inflight.get(mac)
            if waiting is not None:
                if then is not None and len(waiting) < MAX_PARKED_PER_MAC:
                    waiting.append(then)
                return
            self._inflight[mac] = [then] if then is not None else []
            self.metrics.pending.inc()
        self._pool.submit(self._run, mac)

    def wait(self, mac: str, timeout: float) -> Decision | None:
        """Blocking variant for threads that may wait (port 4011, HTTP)."""
        d = self.get(mac)
        if d is not None:
            return d
        done = threading.Event()
        box: list[Decision] = []

        def then(dec: Decision) -> None:
            box.append(dec)
            done.set()

        self.ask(mac, then)
        done.wait(timeout)
        return box[0] if box else None

    def _run(self, mac: str) -> None:
        try:
            decision = self.decider.explain(mac)
        except Exception as e:  # a decider bug: treat as "could not ask", fail closed for this packet
            logger.opt(exception=True).error("boot decision for {} failed", mac)
            decision = Decision(Verdict.UNAVAILABLE, f"internal error: {type(e).__name__}")
        self.asked += 1
        self.metrics.decisions.labels(decision.verdict.value).inc()
        hold = self.ttl if decision.verdict in (Verdict.DISCOVERY, Verdict.DISK, Verdict.AMBIGUOUS) else UNCACHED_HOLD
        now = self.clock()
        with self._lock:
            if hold > 0:
                self._fresh[mac] = (now + hold, decision)
                if len(self._fresh) > 20_000:  # spoofed-MAC storm: drop expired entries
                    self._fresh = {k: v for k, v in self._fresh.items() if v[0] > now}
            callbacks = self._inflight.pop(mac, [])
            self.metrics.pending.dec()
        for cb in callbacks:
            try:
                cb(decision)
            except Exception:
                logger.opt(exception=True).error("after the boot decision for {}", mac)

    def invalidate(self, mac: str | None = None) -> None:
        with self._lock:
            if mac is None:
                self._fresh.clear()
            else:
                self._fresh.pop(mac, None)
        self.decider.invalidate(mac)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class BootTracker:
    """Counts boot attempts: a new (MAC, xid) that got an answer is one attempt, except
    * the iPXE that a PXE ROM just chain-loaded (same MAC, new xid, within ``chain_window``), and
    * a new xid from the same MAC within ``same_window`` of its last answered packet (firmware
      restarting DHCP; no machine gets through POST and back to PXE that fast): both are the same attempt.
    The Metal API events go through a bounded backlog; beyond it they are dropped and counted."""

    def __init__(self, metal_api: Any, publisher: Any, metrics: PxeMetrics, *,
                 detector: BootLoopDetector | None = None, chain_window: float = 60.0,
                 same_window: float = 5.0, max_backlog: int = 256,
                 clock: Callable[[], float] = time.monotonic, workers: int = 2) -> None:
        self.same_window = same_window
        self.max_backlog = max_backlog
        self._backlog = 0
        self.metal_api = metal_api
        self.publisher = publisher
        self.metrics = metrics
        self.detector = detector or BootLoopDetector()
        self.chain_window = chain_window
        self.clock = clock
        self._lock = threading.Lock()
        self._xids: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._last: dict[str, tuple[float, bool]] = {}  # mac -> (time, was iPXE)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="pxe-event")
        self.attempts = 0

    def answered(self, info: ClientInfo, decision: Decision, xid: int | None = None) -> bool:
        """Record an answered request (``xid`` overrides info's, for cached replies); True if it
        started a new boot attempt."""
        now = self.clock()
        xid = info.xid if xid is None else xid
        key = (info.mac, xid)
        with self._lock:
            last = self._last.get(info.mac)
            # sliding: every answered packet moves the MAC's time, so a client that keeps asking (a
            # retry storm) stays one attempt; a reboot has a quiet POST phase longer than same_window
            self._last[info.mac] = (now, info.is_ipxe if last is None or key not in self._xids else last[1])
            if key in self._xids:
                return False
            self._xids[key] = None
            while len(self._xids) > 8192:
                self._xids.popitem(last=False)
            if len(self._last) > 8192:
                self._last.pop(next(iter(self._last)))
            if last is not None and (now - last[0] < self.same_window or (
                    info.is_ipxe and not last[1] and now - last[0] < self.chain_window)):
                return False  # a restart of DHCP, or the iPXE a PXE ROM chain-loaded: same attempt
            self.attempts += 1
            if self._backlog >= self.max_backlog:
                backlog_full = True
            else:
                backlog_full = False
                self._backlog += 1
            warning = self.detector.record_boot(info.mac, now)
        machine_id = _machine_id(info, decision)
        if warning is not None:
            self.metrics.boot_loops.inc()
            logger.bind(mac=info.mac, machine_id=machine_id).warning(
                "boot loop: {} PXE-booted {} times within {:.0f} s", info.mac, warning.boots, warning.window)
            if self.publisher is not None:
                self.publisher.publish("boot", "boot-loop", {"boots": warning.boots, "window": warning.window},
                                       mac=info.mac, machine_id=machine_id)
        if self.publisher is not None:
            self.publisher.publish("boot", "pxe-booting", {"xid": f"0x{xid:08x}", "arch": info.arch,
                                                           "ipxe": info.is_ipxe, "reason": decision.reason},
                                   mac=info.mac, machine_id=machine_id)
        if backlog_full:
            self.metrics.pxe_booting.labels("dropped").inc()
        else:
            self._pool.submit(self._send_event, info.mac, machine_id)
        return True

    def registered(self, mac: str) -> None:
        with self._lock:
            self.detector.registered(mac)

    def _send_event(self, mac: str, machine_id: str | None) -> None:
        try:
            self._post_event(mac, machine_id)
        finally:
            with self._lock:
                self._backlog -= 1

    def _post_event(self, mac: str, machine_id: str | None) -> None:
        log = logger.bind(mac=mac, machine_id=machine_id)
        if not machine_id:
            self.metrics.pxe_booting.labels("no_machine_id").inc()
            log.info("PXE boot of {}: no machine id (no GUID, unknown MAC), no provisioning event", mac)
            return
        try:
            self.metal_api.add_provisioning_event(machine_id, {
                "event": PXE_BOOTING, "message": "machine sent extended dhcp request"})
            self.metrics.pxe_booting.labels("sent").inc()
        except Exception as e:  # the Metal API being down must not matter to the boot itself
            self.metrics.pxe_booting.labels("failed").inc()
            log.warning("could not send the '{}' event of {}: {}", PXE_BOOTING, machine_id, e)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


def _machine_id(info: ClientInfo, decision: Decision) -> str | None:
    """metal-stack's machine id is the SMBIOS UUID, which PXE sends as option 97 (pixie's /v1/dhcp/<guid>);
    an all-zero GUID (OVMF without -smbios uuid) says nothing, then the Metal API's answer is used."""
    if info.guid is not None and info.guid.int != 0:
        return str(info.guid)
    return decision.machine_id
