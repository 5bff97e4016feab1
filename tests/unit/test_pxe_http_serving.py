"""Boot files served by BootHttpServer (metalcore/pxe/http.py): real sockets on 127.0.0.1, a real upstream.

Whole file, Range (206), HEAD and keep-alive on one connection, the byte metric (bytes of the body
sent, not file sizes); a client that goes away mid-transfer; stop() with a client that stopped reading;
48 requests at once while the upstream is down all get an answer.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from metalcore.lab.pxe_stage import UpstreamFiles
from metalcore.pxe.http import BootHttpServer
from metalcore.pxe.metrics import PxeMetrics

pytestmark = pytest.mark.timeout(60)

SIZE = 8 << 20


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    d = tmp_path_factory.mktemp("up")
    (d / "initrd.img").write_bytes(os.urandom(SIZE))
    srv = UpstreamFiles(d).start()
    yield srv, (d / "initrd.img").read_bytes()
    srv.stop()


def _server(tmp_path, upstream, url=None):
    up, _ = upstream
    srv = BootHttpServer(gate=None, netns="", bind_ip="127.0.0.1", port=0, public_base="http://127.0.0.1:0",
                         cache_dir=tmp_path / "cache", tftp_root=str(tmp_path), metrics=PxeMetrics())
    srv.start()
    key = srv.cache.register(url or up.url("initrd.img"))
    return srv, f"/boot/{key}/initrd.img"


def _sent_metric(srv) -> float:
    return srv.metrics.http_bytes.labels("boot")._value.get()


def _wait(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_whole_file_range_head_and_keepalive_on_one_connection(tmp_path, upstream):
    srv, path = _server(tmp_path, upstream)
    _, data = upstream
    try:
        before = _sent_metric(srv)
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        c.request("GET", path)  # cold: fetched into the cache, then sent
        r = c.getresponse()
        assert r.status == 200 and int(r.getheader("Content-Length")) == SIZE and r.getheader("Accept-Ranges") == "bytes"
        assert hashlib.sha256(r.read()).digest() == hashlib.sha256(data).digest()
        c.request("GET", path, headers={"Range": "bytes=1000-1999"})  # same connection: keep-alive works
        r = c.getresponse()
        assert r.status == 206 and r.getheader("Content-Range") == f"bytes 1000-1999/{SIZE}"
        assert r.read() == data[1000:2000]
        c.request("HEAD", path)
        r = c.getresponse()
        assert r.status == 200 and int(r.getheader("Content-Length")) == SIZE and r.read() == b""
        c.request("GET", path, headers={"Range": "bytes=-10"})
        r = c.getresponse()
        assert r.status == 206 and r.read() == data[-10:]
        c.close()
        assert srv.cache.fetches == 1
        # bytes of the bodies sent, not file sizes (counted when the send returns: wait for the last one)
        assert _wait(lambda: _sent_metric(srv) - before == SIZE + 1000 + 10), _sent_metric(srv) - before
    finally:
        srv.stop()


def _stalled_client(port: int, path: str) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the send blocks soon
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


def _open_transfers(port: int) -> int:
    """Server-side connections of ``port`` with bytes waiting in the send queue."""
    out = os.popen(f"ss -tnH state established '( sport = :{port} )'").read().split()
    return sum(1 for i in range(0, len(out), 4) if int(out[i + 1]) > 0)


def test_client_that_goes_away_mid_transfer_leaves_the_server_serving(tmp_path, upstream):
    srv, path = _server(tmp_path, upstream)
    _, data = upstream
    try:
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        c.request("GET", path)
        assert c.getresponse().read() == data  # warm the cache
        c.close()
        s = _stalled_client(srv.port, path)
        assert _wait(lambda: _open_transfers(srv.port) == 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # RST: the server's sendfile fails with ECONNRESET/EPIPE
        assert _wait(lambda: _open_transfers(srv.port) == 0)
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        c.request("GET", path, headers={"Range": "bytes=0-9"})
        assert c.getresponse().read() == data[:10]
        c.close()
    finally:
        srv.stop()


def test_stop_does_not_wait_long_for_a_client_that_stopped_reading(tmp_path, upstream):
    srv, path = _server(tmp_path, upstream)
    s = _stalled_client(srv.port, path)
    try:
        assert _wait(lambda: _open_transfers(srv.port) == 1)
        t0 = time.monotonic()
        srv.stop()
        assert time.monotonic() - t0 < 9
    finally:
        s.close()


def test_48_requests_while_the_upstream_is_down_all_get_502(tmp_path, upstream):
    """The waiters of one failed download each get their own 502 (one shared HTTPException instance was
    answered once; the other clients got nothing or hung)."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    srv, path = _server(tmp_path, upstream, url=f"http://127.0.0.1:{dead.getsockname()[1]}/initrd.img")
    results: list = []

    def get() -> None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}{path}", timeout=20) as r:
                results.append(r.status)
        except urllib.error.HTTPError as e:
            results.append(e.code)
        except OSError as e:
            results.append(repr(e))
    try:
        threads = [threading.Thread(target=get) for _ in range(48)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == [502] * 48
    finally:
        srv.stop()
        dead.close()
