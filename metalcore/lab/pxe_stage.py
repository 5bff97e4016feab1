"""Run the PXE stage as a real process against a rack lab (used by tests/integration/test_pxe_stage.py and bench/bench_pxe.py).

The stage runs in the host namespace (it must reach the Metal API stand-in on 127.0.0.1) with
``METAL_CORE_NETNS`` = the lab's rack namespace, where it opens its raw socket, port 4011, TFTP and HTTP.
Also here: a plain HTTP server for the "upstream" kernel/initrd URLs of the partition boot config, and
a client veth in the machines' namespace for raw-socket clients.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from metalcore.lab import procs
from metalcore.lab.procs import LabError, ProcRecord
from metalcore.lab.ports import free_tcp_port

REPO = Path(__file__).resolve().parents[2]


free_port = free_tcp_port  # one implementation: metalcore.lab.ports


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class UpstreamFiles:
    """Plain threaded HTTP on 127.0.0.1 (host namespace) serving a directory: the partition's image server."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(self.dir)))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> "UpstreamFiles":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class PxeStageProc:
    """``python -m stages.pxe`` with settings from the environment."""

    workdir: Path
    rack_ns: str
    rack_if: str
    cidr: str
    metal_api_url: str
    hmac_key: str
    partition_id: str = "lab"
    http_port: int = 4280
    extra_env: dict | None = None
    proc: ProcRecord | None = None
    metrics_port: int = 0

    @property
    def log(self) -> Path:
        return self.workdir / "pxe.log"

    def env(self) -> dict:
        from urllib.parse import urlsplit
        u = urlsplit(self.metal_api_url)
        self.metrics_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("METAL_CORE_")}
        env.update({
            "METAL_CORE_CIDR": self.cidr, "METAL_CORE_PARTITION_ID": self.partition_id,
            "METAL_CORE_HMAC_KEY": self.hmac_key, "METAL_CORE_METAL_API_IP": u.hostname,
            "METAL_CORE_METAL_API_PORT": str(u.port), "METAL_CORE_METAL_API_BASEPATH": u.path,
            "METAL_CORE_PXE_INTERFACE": self.rack_if, "METAL_CORE_NETNS": self.rack_ns,
            "METAL_CORE_PXE_HTTP_PORT": str(self.http_port), "METAL_CORE_RUN_DIR": str(self.workdir / "run"),
            "METAL_CORE_PXE_CACHE_DIR": str(self.workdir / "cache"),
            # /metrics of stage i is base+i: pxe is stage 0
            "METAL_CORE_METRICS_SERVER_BIND_ADDRESS": "127.0.0.1",
            "METAL_CORE_METRICS_SERVER_PORT": str(self.metrics_port),
            "METAL_CORE_LOG_LEVEL": "info", "PYTHONPATH": str(REPO),
        })
        env.update(self.extra_env or {})
        return env

    def start(self, timeout: float = 20.0) -> "PxeStageProc":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = procs.spawn("metalcore-pxe", [sys.executable, "-m", "stages.pxe"], cwd=REPO, log=self.log,
                                env=self.env())

        procs.wait_for_log(self.proc, self.log, "PXE: watching", timeout, "the pxe stage", 0.05, tail=30)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, timeout=10)
            self.proc = None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name):
                continue
            m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
            if not m or m.group(1) != name:
                continue
            got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total


def add_client_veth(machine_ns: str, bridge: str, name: str, mac: str | None = None) -> str:
    """A veth in the machines' namespace: ``name`` for a raw client, its peer in the lab bridge.
    Deleted with the namespace."""
    peer = name + "b"
    def ip(*a: str) -> None:
        r = subprocess.run(["ip", "-n", machine_ns, *a], capture_output=True, text=True)
        if r.returncode:
            raise LabError(f"ip {' '.join(a)}: {r.stderr.strip()}")
    ip("link", "add", name, *(["address", mac] if mac else []), "type", "veth", "peer", "name", peer)
    ip("link", "set", peer, "master", bridge)
    ip("link", "set", peer, "up")
    ip("link", "set", name, "up")
    # frames sent before both ends report carrier are lost: wait for it (plus the bridge port to forward)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        out = subprocess.run(["ip", "-n", machine_ns, "-o", "link", "show"], capture_output=True, text=True).stdout
        lines = [ln for ln in out.splitlines() if f" {name}@" in ln or f" {peer}@" in ln]
        if len(lines) == 2 and all("LOWER_UP" in ln and "state UP" in ln for ln in lines):
            break
        time.sleep(0.02)
    time.sleep(0.2)
    return name
