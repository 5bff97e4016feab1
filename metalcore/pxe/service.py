"""Wires the PXE stage together: raw socket -> watcher -> responder, port 4011, TFTP, HTTP, bus.

Everything facing the booting machines is opened inside ``settings.netns`` (the lab's rack namespace;
empty on a real rack host); the Metal API client and the bus stay in the process's own namespace.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from loguru import logger

from metalcore.boot import BootDecider
from metalcore.protocol.bootloop import BootLoopDetector
from metalcore.protocol.pxe import BootFiles, ProxySettings
from metalcore.pxe.decisions import BootTracker, DecisionGate
from metalcore.pxe.http import BootHttpServer
from metalcore.pxe.metrics import PxeMetrics
from metalcore.pxe.rawsock import PacketSocket
from metalcore.pxe.responder import ProxyPort, Responder
from metalcore.pxe.tftp import TftpServer
from metalcore.pxe.watch import EventQueue, Watcher, decode_frame, event_body

__all__ = ["PxeService", "proxy_settings"]

SWITCH_INTERVAL = 0.0002
STATS_TICK = 0.25


def proxy_settings(settings: Any, http_port: int | None = None) -> ProxySettings:
    ip = settings.cidr.ip
    base = f"http://{ip}:{http_port or settings.pxe_http_port}"
    return ProxySettings(
        server_ip=ip,
        ipxe_script_url=base + "/ipxe/{mac}",
        http_boot_base_url=base + "/efi",
        boot_files=BootFiles(snponly=settings.efi_boot_file == "snponly.efi"),
    )


class PxeService:
    """start() opens every socket (raises if one cannot be opened), stop() closes them."""

    def __init__(self, settings: Any, publisher: Any, metal_api: Any, *, decider: Any = None,
                 with_tftp: bool = True, with_http: bool = True, fanout_group: int | None = None) -> None:
        self.settings = settings
        self.publisher = publisher
        self.metal_api = metal_api
        self.metrics = PxeMetrics()
        self.decider = decider or BootDecider(settings, metal_api)
        self.gate = DecisionGate(self.decider, float(settings.boot_decision_cache), self.metrics)
        self.tracker = BootTracker(metal_api, publisher, self.metrics, detector=BootLoopDetector())
        self.with_tftp, self.with_http, self.fanout_group = with_tftp, with_http, fanout_group
        self.sock: PacketSocket | None = None
        self.watcher: Watcher | None = None
        self.events: EventQueue | None = None
        self.proxy_port: ProxyPort | None = None
        self.tftp: TftpServer | None = None
        self.http: BootHttpServer | None = None
        self._stats_stop = threading.Event()
        self._stats_thread = threading.Thread(target=self._poll_stats, name="pxe-stats", daemon=True)
        self.kernel_drops = 0

    def start(self) -> "PxeService":
        # The packet loop shares one GIL with the helper threads (bus publisher, decision pool, HTTP loop,
        # metrics). When a frame arrives while a helper runs Python, the loop waits for the interpreter's
        # switch interval (5 ms by default): that was the p99 of the offer latency. 0.2 ms bounds it.
        sys.setswitchinterval(SWITCH_INTERVAL)
        s = self.settings
        ns, ip = s.netns, str(s.cidr.ip)
        try:
            if self.with_http:
                cache = Path(s.pxe_cache_dir or Path(s.run_dir) / "pxe-cache")
                self.http = BootHttpServer(gate=self.gate, netns=ns, bind_ip=ip, port=s.pxe_http_port,
                                           public_base=f"http://{ip}:{s.pxe_http_port}", cache_dir=cache,
                                           tftp_root=s.tftp_root, metrics=self.metrics).start()
                self.http.public_base = f"http://{ip}:{self.http.port}"  # the bound port, if 0 was asked
            if self.with_tftp:
                self.tftp = TftpServer(s.tftp_root, ns, ip, s.tftp_port, self.metrics).start()
            proxy = proxy_settings(s, self.http.port if self.http else None)
            self.sock = PacketSocket(s.pxe_interface, ns, fanout_group=self.fanout_group)
            self.responder = Responder(proxy, self.sock, self.gate, self.tracker, self.metrics)
            self.proxy_port = ProxyPort(self.responder, ns, proxy.server_ip).start()
            if self.publisher is not None:
                self.events = EventQueue(self._publish, self.metrics).start()
            self.watcher = Watcher(self.sock, self.metrics, self.events, self.responder.on_request,
                                   is_ours=self.responder.is_ours, fast=self.responder.fast_answer).start()
            self._stats_thread.start()
        except BaseException:
            self.stop()
            raise
        logger.info("PXE: watching {} (netns {!r}), ProxyDHCP as {}, port 4011, TFTP :{}, HTTP :{}",
                    s.pxe_interface, ns or "-", ip, self.tftp.port if self.tftp else "-",
                    self.http.port if self.http else "-")
        return self

    def _publish(self, rx, at: float) -> None:
        body = event_body(decode_frame(rx, at))
        self.publisher.publish("dhcp", body["type"].lower(), body, mac=body["mac"])

    def _poll_stats(self) -> None:
        """Every 0.25 s: the packet loop's tallies into Prometheus (a scrape flushes them too); every
        second: the kernel's drop count."""
        tick = 0
        while not self._stats_stop.wait(STATS_TICK):
            self.metrics.flush()
            tick += 1
            if tick % 4:
                continue
            try:
                _packets, drops = self.sock.stats()
            except OSError:
                return
            if drops:
                self.kernel_drops += drops
                self.metrics.socket_drops.inc(drops)

    def on_bus_event(self, env: Any) -> None:
        """switch.bootconfig -> fallback boot config; hammer registration -> reset boot-loop count."""
        if env.stream == "switch" and env.name == "bootconfig":
            self.decider.set_fallback_bootconfig(env.body.get("bootconfig") or env.body)
        elif env.stream == "hammer" and env.name == "register":
            for mac in env.body.get("macs") or ([env.mac] if env.mac else []):
                self.tracker.registered(mac)

    def stop(self) -> None:
        self._stats_stop.set()
        for part in (self.watcher, self.proxy_port, self.events, self.tftp, self.http):
            if part is not None:
                try:
                    part.stop()
                except Exception:
                    logger.opt(exception=True).warning("stopping {} failed", type(part).__name__)
        if self.sock is not None:
            self.sock.close()
        self.gate.close()
        self.tracker.close()
        self.metrics.flush()

    def stats(self) -> dict[str, Any]:
        return {
            "jobs_in_flight": 0,
            "dhcp_seen": self.watcher.seen if self.watcher else 0,
            "malformed": self.watcher.malformed if self.watcher else 0,
            "offers": self.responder.offers if self.watcher else 0,
            "acks_4011": self.proxy_port.acks if self.proxy_port else 0,
            "boot_attempts": self.tracker.attempts,
            "kernel_drops": self.kernel_drops,
            "events_dropped": self.events.dropped if self.events else 0,
            "at": time.time(),
        }
