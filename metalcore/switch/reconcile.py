"""The switch reconcile loop: one thread, one driver session and one reconcile at a time per switch.

Per switch (metal-core ``registerSwitch.go`` / ``reconfigureSwitch.go``, research note §4.1-4.2):

1. register until it works: ``POST /v1/switch/register`` with the switch's ports and MACs read over
   NETCONF (minus additional bridge ports); the answer's partition boot config goes on the bus
   (``switch.bootconfig``) for the PXE stage;
2. every ``reconfigure_switch_interval`` — and at once when ``trigger()`` is called (the service calls it
   on the bus events ``hammer.report-done`` and ``nsq.free``) — reconcile:
   ``GET /v1/switch/{id}`` -> desired port states -> diff with the running config -> apply when they
   differ (nothing at all when equal; only logged and published in a dry run) ->
   ``POST /v1/switch/{id}/notify {sync_duration: ns, error}``.

Triggers that arrive during a reconcile coalesce into one more reconcile (an Event, not a queue).
Nothing here lets an exception end the thread: a Metal API or a switch that is away is logged, notified
where possible, and tried again next interval.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from loguru import logger

from metalcore import metrics
from metalcore.errors import MetalAPIError, MetalAPIUnavailable
from metalcore.switch import models
from metalcore.switch.base import (SwitchBusy, SwitchDriver, SwitchError, SwitchRejected, SwitchUnreachable,
                                   VerifyFailed, make_driver)

STAGE = "switch"
TRIGGERS = {("hammer", "report-done"), ("nsq", "free")}
REGISTER_BACKOFF = (1.0, 30.0)  # metal-core retried every 1 s (30 s in newer code); we double up to 30 s

RECONCILES = metrics.counter(STAGE, "reconciles_total", "Switch reconciles by outcome: noop, applied, "
                             "dry-run, error-api, error-switch, error-desired, error-rejected.",
                             ("switch", "outcome"))
COMMIT_SECONDS = metrics.histogram(STAGE, "commit_seconds", "Lock to confirming commit of one switch change, "
                                   "read-back included.", ("switch",))
PORTS_CHANGED = metrics.counter(STAGE, "ports_changed_total", "Switch ports moved by a committed change.",
                                ("switch",))
DRIFT = metrics.counter(STAGE, "drift_ports_total", "Ports whose running config differed from what the "
                        "previous reconcile left (changed behind metalcore's back, or rolled back).",
                        ("switch",))
REGISTERED = metrics.gauge(STAGE, "registered", "1 when the switch is registered at the Metal API.", ("switch",))


@dataclass
class Outcome:
    outcome: str
    error: str | None = None
    changes: models.ChangeSet | None = None
    seconds: float = 0.0
    notified: bool = False


@dataclass
class _Stats:
    reconciles: int = 0
    commits: int = 0
    last_outcome: str | None = None
    last_error: str | None = None
    in_flight: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


class SwitchReconciler:
    """Registration and the reconcile loop of one switch."""

    def __init__(self, settings, target, api, publisher, driver: SwitchDriver | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.target, self.api, self.publisher = settings, target, api, publisher
        self.switch_id = target.name
        self.driver = driver or make_driver(target, confirm_timeout=settings.switch_confirm_timeout,
                                            confirm_delay=settings.switch_test_confirm_delay)
        self.clock = clock
        self.log = logger.bind(switch=self.switch_id)
        self.registered = False
        self.bootconfig: dict | None = None
        self.stats = _Stats()
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._run_lock = threading.Lock()
        self._last_ports: dict[str, models.PortState] | None = None
        self._thread: threading.Thread | None = None

    # -- registration ---------------------------------------------------------------------------------
    def register(self) -> dict:
        """One registration attempt; raises on failure (the loop retries)."""
        ports = self.driver.read_ports()
        skip = set(self.settings.additional_bridge_ports)
        nics = [{"name": n, "mac": mac} for n, mac in sorted(ports.items(), key=lambda kv: models._port_sort_key(kv[0]))
                if n not in skip]
        body = {"id": self.switch_id, "name": self.switch_id, "partition_id": self.settings.partition_id,
                "rack_id": self.settings.rack_id, "nics": nics,
                "description": f"leaf {self.switch_id} managed by metalcore"}
        status, resp = self.api.register_switch(body)
        self.registered = True
        REGISTERED.labels(self.switch_id).set(1)
        partition = (resp or {}).get("partition") or {}
        self.bootconfig = partition.get("bootconfig")
        self.log.info("switch {} registered ({}, {} ports) in partition {}", self.switch_id,
                      "created" if status == 201 else "updated", len(nics), partition.get("id"))
        if self.bootconfig is not None:
            self.publisher.publish("switch", "bootconfig", {"switch": self.switch_id,
                                                            "partition_id": partition.get("id"),
                                                            "bootconfig": self.bootconfig})
        self.publisher.publish("switch", "registered", {"switch": self.switch_id, "nics": len(nics),
                                                        "status": status})
        return resp

    # -- one reconcile ----------------------------------------------------------------------------------
    def reconcile(self) -> Outcome:
        """GET desired -> diff with running -> apply (or not) -> notify. Never raises."""
        with self._run_lock:
            self.stats.in_flight += 1
            try:
                out = self._reconcile()
            except Exception as e:  # a bug must not end the loop; it still counts and is notified
                self.log.exception("switch {} reconcile crashed", self.switch_id)
                out = Outcome("error-internal", f"internal error: {type(e).__name__}: {e}")
            finally:
                self.stats.in_flight -= 1
        self.stats.reconciles += 1
        self.stats.last_outcome, self.stats.last_error = out.outcome, out.error
        self.stats.outcomes[out.outcome] = self.stats.outcomes.get(out.outcome, 0) + 1
        RECONCILES.labels(self.switch_id, out.outcome).inc()
        return out

    def _reconcile(self) -> Outcome:
        started = self.clock()
        s = self.settings
        try:
            sw = self.api.get_switch(self.switch_id)
        except MetalAPIError as e:
            if e.status == 404:
                self.log.warning("switch {} unknown to the Metal API: registering again", self.switch_id)
                self.registered = False
                REGISTERED.labels(self.switch_id).set(0)
            else:
                self.log.warning("switch {}: cannot read desired state: {}", self.switch_id, e)
            return Outcome("error-api", str(e), seconds=self.clock() - started)
        except MetalAPIUnavailable as e:
            self.log.warning("switch {}: Metal API unavailable, no reconcile: {}", self.switch_id, e)
            return Outcome("error-api", str(e), seconds=self.clock() - started)

        error: str | None = None
        changes: models.ChangeSet | None = None
        try:
            running = self.driver.read_running()
            self._note_drift(running)
            desired = models.desired_state(
                sw.get("nics") or [], running, pxe_vlan=s.pxe_vlan_id, spine_uplinks=s.spine_uplinks,
                additional_bridge_ports=s.additional_bridge_ports, additional_bridge_vids=s.additional_bridge_vids)
            changes = models.diff(desired, running)
            if changes.empty:
                outcome = "noop"
                self._last_ports = dict(running.ports)
            elif not s.reconfigure_switch:
                outcome = "dry-run"
                summary = changes.summary(s.pxe_vlan_id)
                self.log.info("switch {} dry run (reconfigure_switch=false): would change {} port(s): {}",
                              self.switch_id, len(changes.ports), summary)
                self.publisher.publish("switch", "diff", {"switch": self.switch_id, "dry_run": True, **summary})
                self._last_ports = dict(running.ports)
            else:
                outcome = "applied"
                self._apply(sw, changes)
        except models.DesiredStateError as e:
            outcome, error = "error-desired", f"desired state cannot be applied to {self.switch_id}: {e}"
            self.log.error("switch {}: {}; nothing applied", self.switch_id, error)
        except (SwitchRejected, VerifyFailed) as e:
            outcome, error = "error-rejected", str(e)
            self.log.error("switch {}: change refused, switch left as it was: {}", self.switch_id, e)
        except (SwitchUnreachable, SwitchBusy, SwitchError) as e:
            outcome, error = "error-switch", str(e)
            self.log.warning("switch {}: {}", self.switch_id, e)
        seconds = self.clock() - started
        if error is not None:
            self.publisher.publish("switch", "reconcile-failed", {"switch": self.switch_id, "outcome": outcome,
                                                                 "error": error})
        out = Outcome(outcome, error, changes, seconds)
        out.notified = self._notify(seconds, error)
        return out

    def _apply(self, sw: dict, changes: models.ChangeSet) -> None:
        s = self.settings
        summary = changes.summary(s.pxe_vlan_id)
        self.log.info("switch {}: applying {} port change(s): {}", self.switch_id, len(changes.ports), summary)
        result = self.driver.apply(changes)
        self.stats.commits += 1
        COMMIT_SECONDS.labels(self.switch_id).observe(result.commit_seconds)
        PORTS_CHANGED.labels(self.switch_id).inc(len(changes.ports))
        self._last_ports = dict(result.running.ports)
        machines = models.machine_ids_by_port(sw)
        for c in changes.ports:
            mid = machines.get(c.name)
            self.publisher.publish("switch", "port-moved", {
                "switch": self.switch_id, "port": c.name,
                "from": c.before.label(s.pxe_vlan_id) if c.before else None,
                "to": c.after.label(s.pxe_vlan_id), "machine_id": mid}, machine_id=mid)
            self.log.bind(machine_id=mid).info("switch {} port {}: {} -> {}", self.switch_id, c.name,
                                               c.before.label(s.pxe_vlan_id) if c.before else None,
                                               c.after.label(s.pxe_vlan_id))
        self.publisher.publish("switch", "applied", {"switch": self.switch_id, "ports": len(changes.ports),
                                                     "commit_seconds": round(result.commit_seconds, 6),
                                                     "attempts": result.attempts, **summary})

    def _note_drift(self, running: models.SwitchConfig) -> None:
        if self._last_ports is None:
            return
        drifted = sorted(n for n, p in running.ports.items() if n in self._last_ports and self._last_ports[n] != p)
        if drifted:
            DRIFT.labels(self.switch_id).inc(len(drifted))
            self.log.warning("switch {}: drift on {} port(s) since the last reconcile: {}", self.switch_id,
                             len(drifted), ", ".join(drifted))
            self.publisher.publish("switch", "drift", {"switch": self.switch_id, "ports": drifted})

    def _notify(self, seconds: float, error: str | None) -> bool:
        try:
            self.api.notify_switch(self.switch_id, {"sync_duration": int(seconds * 1e9), "error": error})
            return True
        except (MetalAPIError, MetalAPIUnavailable) as e:
            self.log.warning("switch {}: notify failed: {}", self.switch_id, e)
            return False

    # -- the loop -----------------------------------------------------------------------------------------
    def trigger(self, reason: str = "") -> None:
        """Reconcile at once (or right after the running one; several triggers make one reconcile)."""
        if reason:
            self.log.debug("switch {}: reconcile triggered by {}", self.switch_id, reason)
        self._wake.set()

    def run(self) -> None:
        backoff = REGISTER_BACKOFF[0]
        while not self._halt.is_set():
            if not self.registered:
                try:
                    self.register()
                    backoff = REGISTER_BACKOFF[0]
                except Exception as e:  # switch or Metal API away: keep trying, never crash
                    self.log.warning("switch {}: registration failed, again in {:.0f}s: {}", self.switch_id,
                                     backoff, e)
                    self._halt.wait(backoff)
                    backoff = min(backoff * 2, REGISTER_BACKOFF[1])
                    continue
            self._wake.clear()
            self.reconcile()
            if self._halt.is_set():
                break
            self._wake.wait(self.settings.reconfigure_switch_interval)

    def start(self) -> "SwitchReconciler":
        self._thread = threading.Thread(target=self.run, name=f"switch-{self.switch_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._halt.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.driver.close()


class SwitchService:
    """Every configured switch's reconciler plus the bus triggers."""

    def __init__(self, settings, api, publisher, driver_factory: Callable[[Any], SwitchDriver] | None = None,
                 subscriber_factory: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self.reconcilers = [SwitchReconciler(settings, t, api, publisher,
                                             driver=driver_factory(t) if driver_factory else None)
                            for t in settings.switches]
        self._subscriber_factory = subscriber_factory
        self._halt = threading.Event()
        self._trigger_thread: threading.Thread | None = None
        self.triggers = 0

    def start(self) -> None:
        for r in self.reconcilers:
            r.start()
        self._trigger_thread = threading.Thread(target=self._listen, name="switch-triggers", daemon=True)
        self._trigger_thread.start()

    def trigger_all(self, reason: str = "") -> None:
        self.triggers += 1
        for r in self.reconcilers:
            r.trigger(reason)

    def _listen(self) -> None:
        from metalcore.bus import EventSubscriber
        sub = (self._subscriber_factory() if self._subscriber_factory else
               EventSubscriber(self.settings.run_dir, streams=sorted({s for s, _ in TRIGGERS})))
        try:
            while not self._halt.is_set():
                try:
                    env = sub.recv(timeout=0.5)
                except Exception as e:  # a broken message must not stop the triggers
                    logger.warning("switch trigger subscriber: {}", e)
                    continue
                if env is not None and (env.stream, env.name) in TRIGGERS:
                    self.trigger_all(f"{env.stream}.{env.name} ({env.machine_id or env.mac or ''})")
        finally:
            sub.close()

    def stop(self) -> None:
        self._halt.set()
        for r in self.reconcilers:
            r._halt.set()
            r._wake.set()
        for r in self.reconcilers:
            r.stop()
        if self._trigger_thread is not None:
            self._trigger_thread.join(5)

    def stats(self) -> dict[str, Any]:
        return {"jobs_in_flight": sum(r.stats.in_flight for r in self.reconcilers),
                "switches": {r.switch_id: {"registered": r.registered, "reconciles": r.stats.reconciles,
                                           "commits": r.stats.commits, "last_outcome": r.stats.last_outcome,
                                           "last_error": r.stats.last_error} for r in self.reconcilers}}
