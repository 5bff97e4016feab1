"""BootDecider: the boot decision with its I/O (the Metal API client it is handed) and its state.

State kept here, behind one lock:
* the per-MAC decision cache (``settings.boot_decision_cache`` seconds; only answers the Metal API gave
  are cached, never "could not ask", so a recovered Metal API is heard at once);
* the partition boot config: re-read from ``GET /v1/partition/{id}`` at most once per cache period,
  the last good one kept while the Metal API is down, and a fallback (the copy the switch stage got at
  switch registration, as metal-core fell back to it) used when none was ever read.

When the Metal API cannot be asked, ``settings.boot_fail_open`` decides: true boots discovery (a
machine that runs its installed OS does not PXE boot, so a PXE request mostly comes from a machine
that needs metal-hammer), false answers nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping

from loguru import logger

from metalcore.boot.decision import (BootConfig, Decision, DecisionCache, Verdict, build_response, classify,
                                     normalize_mac)
from metalcore.errors import MetalAPIError, MetalAPIUnavailable

__all__ = ["BootDecider"]

_UPSTREAM_ERRORS = (MetalAPIError, MetalAPIUnavailable)


class BootDecider:
    """Thread-safe; one per stage process. ``metal_api`` needs ``find_machines_by_mac`` and
    ``get_partition`` (metalcore.clients.MetalAPIClient)."""

    def __init__(self, settings: Any, metal_api: Any, *, clock: Callable[[], float] = time.monotonic,
                 fallback_bootconfig: BootConfig | None = None) -> None:
        self.metal_api = metal_api
        self.clock = clock
        self.partition_id: str = settings.partition_id
        self.fail_open: bool = bool(settings.boot_fail_open)
        self.refresh_interval: float = float(settings.boot_decision_cache)
        ip = settings.cidr.ip
        self._core_ip = f"[{ip}]" if ip.version == 6 else str(ip)
        self._core_port = int(settings.port)
        self._api_url = settings.metal_api_url
        self._debug = settings.log_level in ("debug", "trace")
        self._cache = DecisionCache(self.refresh_interval)
        self._lock = threading.Lock()
        self._bootconfig: BootConfig | None = None
        self._bootconfig_checked_at: float | None = None
        self._fallback = fallback_bootconfig
        self.metal_api_calls = 0

    # --- boot config ------------------------------------------------------------------------------

    def set_fallback_bootconfig(self, bootconfig: BootConfig | Mapping[str, Any] | None) -> None:
        """The boot config to use when the partition could never be read (switch registration's copy)."""
        if bootconfig is not None and not isinstance(bootconfig, BootConfig):
            bootconfig = BootConfig.from_api(bootconfig)
        with self._lock:
            self._fallback = bootconfig

    def bootconfig(self) -> BootConfig | None:
        """The partition boot config: fresh if due, else the last good one, else the fallback."""
        now = self.clock()
        with self._lock:
            due = self._bootconfig_checked_at is None or now - self._bootconfig_checked_at >= self.refresh_interval
            if due:
                # claimed before the call so that concurrent requests do not all refresh at once
                self._bootconfig_checked_at = now
        if due:
            try:
                self.metal_api_calls += 1
                partition = self.metal_api.get_partition(self.partition_id)
                fresh = BootConfig.from_api(partition.get("bootconfig") if isinstance(partition, Mapping) else None)
                if fresh is None:
                    logger.warning("partition {} has no usable bootconfig (kernelurl/imageurl); keeping the "
                                   "last good one", self.partition_id)
                else:
                    with self._lock:
                        self._bootconfig = fresh
            except _UPSTREAM_ERRORS as e:
                logger.warning("could not refresh the boot config of partition {}: {}; keeping the last good one",
                               self.partition_id, e)
        with self._lock:
            return self._bootconfig or self._fallback

    # --- the decision -----------------------------------------------------------------------------

    def decide(self, mac: str):
        """BootResponse to PXE boot metal-hammer, or None (boot from disk / do not answer)."""
        return self.explain(mac).response

    def explain(self, mac: str) -> Decision:
        """The decision with its reason. Raises ValueError for a string that is not a MAC."""
        mac = normalize_mac(mac)
        now = self.clock()
        with self._lock:
            hit = self._cache.get(mac, now)
        if hit is not None:
            return Decision(hit.verdict, hit.reason, hit.response, hit.machine_id, hit.machine_ids, cached=True)
        log = logger.bind(mac=mac)
        try:
            self.metal_api_calls += 1
            machines = self.metal_api.find_machines_by_mac(mac)
        except _UPSTREAM_ERRORS as e:
            if not self.fail_open:
                log.warning("boot decision for {}: metal-api unavailable ({}); failing closed", mac, e)
                return Decision(Verdict.UNAVAILABLE, f"metal-api unavailable: {e}")
            log.warning("boot decision for {}: metal-api unavailable ({}); failing open to discovery", mac, e)
            return self._discovery(f"metal-api unavailable, failing open: {e}", None)
        verdict, reason, machine_id = classify(machines)
        ids = tuple(str(m.get("id")) for m in machines if isinstance(m, Mapping))
        if verdict is Verdict.DISCOVERY:
            decision = self._discovery(reason, machine_id)
        else:
            decision = Decision(verdict, reason, None, machine_id, ids)
            if verdict is Verdict.AMBIGUOUS:
                log.error("boot decision for {}: {}; not booting it over the network", mac, reason)
        if decision.verdict is not Verdict.NO_BOOTCONFIG:
            with self._lock:
                self._cache.put(mac, decision, now)
        return decision

    def _discovery(self, reason: str, machine_id: str | None) -> Decision:
        config = self.bootconfig()
        if config is None:
            logger.error("machine {} needs discovery but partition {} has no known boot config", machine_id,
                         self.partition_id)
            return Decision(Verdict.NO_BOOTCONFIG, f"{reason}; but no boot config of partition "
                            f"{self.partition_id} is known", None, machine_id)
        resp = build_response(config, metal_core_ip=self._core_ip, metal_core_port=self._core_port,
                              metal_api_url=self._api_url, debug=self._debug)
        return Decision(Verdict.DISCOVERY, reason, resp, machine_id, (machine_id,) if machine_id else ())

    def invalidate(self, mac: str | None = None) -> None:
        """Forget a MAC's cached decision (or all), e.g. when the machine was freed or allocated."""
        with self._lock:
            self._cache.invalidate(normalize_mac(mac) if mac else None)
