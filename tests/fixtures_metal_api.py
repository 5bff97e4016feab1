"""Fixtures for the Metal API stand-in (list in tests/conftest.py ``pytest_plugins``).

``metal_api``          a running stand-in (waitress in a thread, real socket on a free port), partition
                       "lab", keys ``METAL_API_KEYS``, wait timeout 2 s; yields a :class:`MetalAPILab`
                       (url, keys, calls(), set_faults(), allocate(), free(), switches(), events() ...,
                       plus ``.server``, the in-process LabServer). Teardown fails the test if any
                       request or answer broke metal-api's swagger.
``metal_api_factory``  start more / differently configured ones: ``metal_api_factory(nsqd_http=...,
                       wait_timeout=..., twin_switches=..., bootconfig={...}, basepath=...)``.
``metal_api_nsqd``     an own nsqd (/work/main/.lab-bin/nsqd) on free ports, killed by pid at teardown;
                       yields ``NsqdProc`` (tcp, http addresses) with ``tail(topic, channel)``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from metalcore.lab.metal_api import LabConfig, LabServer, MetalAPILab

METAL_API_KEYS = {"Metal-View": "test-view-key", "Metal-Edit": "test-edit-key", "Metal-Admin": "test-admin-key"}
NSQD_BIN = Path(__file__).resolve().parents[1] / ".lab-bin" / "nsqd"


@pytest.fixture
def metal_api_factory():
    started: list[tuple[LabServer, MetalAPILab]] = []

    def start(**config) -> MetalAPILab:
        config.setdefault("keys", dict(METAL_API_KEYS))
        config.setdefault("partition_id", "lab")
        config.setdefault("wait_timeout", 2.0)
        config.setdefault("bootconfig", {"imageurl": "http://lab/metal-hammer-initrd.img.lz4",
                                         "kernelurl": "http://lab/metal-hammer-kernel",
                                         "commandline": "console=ttyS0 ip=dhcp"})
        srv = LabServer(LabConfig(**config)).start()
        lab = MetalAPILab(f"http://{srv.host}:{srv.port}", config["keys"], config.get("basepath", ""))
        lab.server = srv
        started.append((srv, lab))
        lab.wait_ready()
        return lab

    yield start
    problems = []
    for srv, lab in started:
        problems += srv.state.recorder.violations()
        lab.close()
        srv.stop()
    assert not problems, "metal-api stand-in saw swagger violations:\n" + json.dumps(problems, indent=1)[:5000]


@pytest.fixture
def metal_api(metal_api_factory) -> MetalAPILab:
    return metal_api_factory()


# --- nsqd -----------------------------------------------------------------------------------------

class NsqTail:
    """Minimal synchronous nsqd TCP consumer (protocol V2): SUB, RDY, read messages, FIN each."""

    def __init__(self, tcp: str, topic: str, channel: str, timeout: float = 5.0) -> None:
        host, port = tcp.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.sendall(b"  V2")
        self.sock.sendall(f"SUB {topic} {channel}\n".encode())
        kind, data = self._frame()
        if (kind, data) != (0, b"OK"):
            raise RuntimeError(f"SUB failed: {kind} {data!r}")
        self.sock.sendall(b"RDY 16\n")

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("nsqd closed the connection")
            buf += chunk
        return buf

    def _frame(self) -> tuple[int, bytes]:
        size, kind = struct.unpack(">ii", self._read(8))
        return kind, self._read(size - 4)

    def next(self, timeout: float = 5.0) -> dict:
        """The next message body as JSON (FIN'ed); socket.timeout if none arrives in time."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            kind, data = self._frame()
            if kind == 0 and data == b"_heartbeat_":
                self.sock.sendall(b"NOP\n")
            elif kind == 1:
                raise RuntimeError(f"nsqd error frame: {data!r}")
            elif kind == 2:
                msg_id, body = data[10:26], data[26:]
                self.sock.sendall(b"FIN " + msg_id + b"\n")
                return json.loads(body)

    def close(self) -> None:
        try:
            self.sock.sendall(b"CLS\n")
        except OSError:
            pass
        self.sock.close()


@dataclass
class NsqdProc:
    proc: subprocess.Popen
    tcp: str
    http: str

    def tail(self, topic: str, channel: str = "core") -> NsqTail:
        return NsqTail(self.tcp, topic, channel)


@pytest.fixture
def metal_api_nsqd():
    if not NSQD_BIN.exists():
        pytest.fail(f"{NSQD_BIN} missing: build it with scripts/build-nsq (nsqd v1.3.0)")
    with tempfile.TemporaryDirectory(prefix="metal-api-nsqd-") as data:
        log = open(os.path.join(data, "nsqd.log"), "w+")
        proc = subprocess.Popen([str(NSQD_BIN), "--tcp-address=127.0.0.1:0", "--http-address=127.0.0.1:0",
                                 f"--data-path={data}"], stdout=log, stderr=subprocess.STDOUT)
        try:
            tcp = http = None
            deadline = time.monotonic() + 10
            while (tcp is None or http is None) and time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                text = Path(log.name).read_text()
                m = re.search(r"TCP: listening on (\S+)", text)
                tcp = m.group(1) if m else None
                m = re.search(r"HTTP: listening on (\S+)", text)
                http = m.group(1) if m else None
                time.sleep(0.02)
            if tcp is None or http is None:
                pytest.fail(f"nsqd did not start: {Path(log.name).read_text()[-2000:]}")
            yield NsqdProc(proc, tcp, http)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
