"""The Metal API client's own HTTP/1.1 pool against a scripted socket server on 127.0.0.1 (no peers).

Each test scripts the raw bytes the server answers, so framing (Content-Length, chunked, end of
connection), keep-alive decisions and failures are checked byte by byte.
"""

from __future__ import annotations

import socket
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from metalcore.clients.metal_api import MetalAPIClient
from metalcore.clients.pooled_http import ConnectionPool, PoolTimeout, Timeout, Unreachable
from metalcore.clients.resilience import RetryPolicy
from metalcore.errors import MetalAPIError, MetalAPIUnavailable
from metalcore.protocol.hmac import HMACVerifier


def _ok(body: bytes = b'{"id":"m1"}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)


class Scripted:
    """Accepts connections; for every request read, sends the next answer of ``answers`` (bytes, or a
    callable(request_bytes) -> bytes | None; None closes the connection without answering)."""

    def __init__(self, answers) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            self.connections += 1
            self.conns.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                while len(buf) < length:
                    buf += s.recv(65536)
                body, buf = buf[:length], buf[length:]
                self.requests.append(head + b"\r\n\r\n" + body)
                answer = self.answers.pop(0)
                if callable(answer):
                    answer = answer(head)
                if answer is None:
                    s.close()
                    return
                s.sendall(answer)
                framed = b"Content-Length" in answer or b"chunked" in answer or answer[9:12] in (b"204", b"304")
                if b"Connection: close" in answer or b"HTTP/1.0" in answer[:8] or not framed:
                    s.close()
                    return
        except OSError:
            return

    def close(self) -> None:
        self.lsock.close()
        for s in self.conns:
            try:
                s.close()
            except OSError:
                pass


@pytest.fixture
def server_factory():
    made = []

    def make(answers):
        srv = Scripted(answers)
        made.append(srv)
        return srv
    yield make
    for srv in made:
        srv.close()


def test_content_length_answer_and_keep_alive_reuse(server_factory):
    srv = server_factory([_ok(), _ok(b'{"id":"m2"}')])
    pool = ConnectionPool(srv.url + "/metal", headers={"Accept": "application/json"})
    a = pool.request("GET", "/v1/machine/m1")
    b = pool.request("POST", "/v1/machine/find", b'{"x":1}', {"Content-Type": "application/json"})
    assert (a.status_code, a.content, a.content_type) == (200, b'{"id":"m1"}', "application/json")
    assert b.content == b'{"id":"m2"}' and b.path == "/metal/v1/machine/find" and b.method == "POST"
    assert srv.connections == 1  # the second request reused the first connection
    first, second = srv.requests
    assert first.startswith(b"GET /metal/v1/machine/m1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{srv.port}\r\n".encode() in first and b"Accept: application/json" in first
    assert b"Content-Length" not in first
    assert second.endswith(b'Content-Length: 7\r\n\r\n{"x":1}')
    pool.close()


def test_post_without_body_says_length_zero(server_factory):
    srv = server_factory([_ok()])
    ConnectionPool(srv.url).request("POST", "/x")
    assert b"Content-Length: 0\r\n" in srv.requests[0]


def test_chunked_answer_with_extension_and_trailer(server_factory):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-Trailer: y\r\n\r\n")
    srv = server_factory([chunked, _ok()])
    pool = ConnectionPool(srv.url)
    assert pool.request("GET", "/a").content == b'{"a":1}'
    assert pool.request("GET", "/b").content == b'{"id":"m1"}'
    assert srv.connections == 1


def test_answer_until_close_is_read_and_connection_not_reused(server_factory):
    srv = server_factory([b"HTTP/1.1 200 OK\r\n\r\nall of it", _ok()])
    pool = ConnectionPool(srv.url)
    assert pool.request("GET", "/a").content == b"all of it"
    assert pool.request("GET", "/b").status_code == 200
    assert srv.connections == 2


@pytest.mark.parametrize("answer", [
    _ok(extra=b"Connection: close\r\n"),
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
])
def test_server_that_closes_gets_a_new_connection(server_factory, answer):
    srv = server_factory([answer, _ok()])
    pool = ConnectionPool(srv.url)
    pool.request("GET", "/a")
    assert pool.idle == 0
    assert pool.request("GET", "/b").status_code == 200
    assert srv.connections == 2


def test_interim_answers_are_skipped(server_factory):
    srv = server_factory([b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + _ok()])
    assert ConnectionPool(srv.url).request("GET", "/a").content == b'{"id":"m1"}'


def test_no_body_for_204_and_304(server_factory):
    srv = server_factory([b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\n\r\n", _ok()])
    pool = ConnectionPool(srv.url)
    assert pool.request("GET", "/a").content == b""
    assert pool.request("GET", "/b").status_code == 304
    assert pool.request("GET", "/c").status_code == 200
    assert srv.connections == 1


def test_idle_connection_closed_by_server_is_not_reused(server_factory):
    srv = server_factory([_ok(), _ok()])
    pool = ConnectionPool(srv.url)
    pool.request("GET", "/a")
    srv.conns[0].shutdown(socket.SHUT_RDWR)  # the server drops the idle keep-alive connection
    time.sleep(0.05)
    assert pool.request("GET", "/b").status_code == 200
    assert srv.connections == 2


def test_closed_without_answer_is_unreachable(server_factory):
    srv = server_factory([None])
    with pytest.raises(Unreachable, match="RemoteProtocolError: .*without answering"):
        ConnectionPool(srv.url).request("GET", "/a")


def test_garbage_is_unreachable(server_factory):
    srv = server_factory([b"SSH-2.0-OpenSSH\r\n\r\n"])
    with pytest.raises(Unreachable, match="not an HTTP"):
        ConnectionPool(srv.url).request("GET", "/a")


def test_short_body_is_unreachable(server_factory):
    srv = server_factory([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabc"])
    with pytest.raises(Unreachable, match="before the end of the body"):
        ConnectionPool(srv.url).request("GET", "/a")


def test_refused_is_unreachable():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(Unreachable, match="ConnectError: .*Connection ?[Rr]efused"):
        ConnectionPool(f"http://127.0.0.1:{port}").request("GET", "/a")


def test_slow_answer_is_timeout(server_factory):
    def slow(_head):
        time.sleep(0.5)
        return _ok()
    srv = server_factory([slow])
    with pytest.raises(Timeout, match="ReadTimeout"):
        ConnectionPool(srv.url).request("GET", "/a", timeout=0.1)


def test_pool_limit_waits_then_times_out(server_factory):
    release = threading.Event()

    def held(_head):
        release.wait(5)
        return _ok()
    srv = server_factory([held, _ok()])
    pool = ConnectionPool(srv.url, max_connections=1)
    t = threading.Thread(target=pool.request, args=("GET", "/held"))
    t.start()
    time.sleep(0.1)
    with pytest.raises(PoolTimeout):
        pool.request("GET", "/b", timeout=0.1)
    release.set()
    t.join(5)
    assert pool.request("GET", "/c").status_code == 200


def test_unquoted_target_is_refused(server_factory):
    srv = server_factory([])
    with pytest.raises(ValueError):
        ConnectionPool(srv.url).request("GET", "/a b\r\nX: y")


# --- the Metal API client on this pool (no transport passed) -----------------------------------------

KEY = "edit-key-never-logged"
T0 = datetime(2020, 7, 13, 12, 0, 0, tzinfo=timezone.utc)


def test_client_signs_and_maps_answers_over_the_pool(server_factory):
    srv = server_factory([
        _ok(b'[{"id":"m1"}]'),
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 44\r\n\r\n" + b'{"statuscode":404,"message":"no machine m9"}',
        b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 2\r\n\r\n{}",
    ])
    client = MetalAPIClient(srv.url + "/metal", KEY, clock=lambda: T0)
    assert client.find_machines_by_mac("aa:bb:cc:dd:ee:ff") == [{"id": "m1"}]
    with pytest.raises(MetalAPIError) as ei:
        client.get_machine("m9")
    assert (ei.value.status, ei.value.message) == (404, "no machine m9")
    assert client.wait_for_allocation("m 1", timeout=5) is None
    find, _get, wait = srv.requests
    assert find.startswith(b"POST /metal/v1/machine/find HTTP/1.1\r\n")
    assert find.endswith(b'\r\n\r\n{"nics_mac_addresses":["aa:bb:cc:dd:ee:ff"]}')
    assert b"Content-Type: application/json\r\n" in find
    assert wait.startswith(b"GET /metal/v1/machine/m%201/wait HTTP/1.1")
    headers = dict(line.split(": ", 1) for line in find.split(b"\r\n\r\n")[0].decode().split("\r\n")[1:])
    assert headers["X-Date"] == "2020-07-13T12:00:00Z"
    salt = headers["X-Data-Salt"]
    assert len(salt) == 24 and salt.isalpha() and salt.isascii()
    assert HMACVerifier("Metal-Edit", KEY).verify("POST", headers["Authorization"], headers["X-Date"], salt,
                                                  T0 + timedelta(seconds=1)) == "Metal-Edit"
    salts = {dict(line.split(b": ", 1) for line in r.split(b"\r\n\r\n")[0].split(b"\r\n")[1:])[b"X-Data-Salt"]
             for r in srv.requests}
    assert len(salts) == 3  # every request has its own salt
    assert KEY not in repr(client)
    client.close()


def test_client_retries_idempotent_calls_over_the_pool(server_factory):
    srv = server_factory([None, b"HTTP/1.1 503 x\r\nContent-Length: 0\r\n\r\n", _ok()])
    client = MetalAPIClient(srv.url, KEY, retry=RetryPolicy(max_attempts=3), sleep=lambda s: None)
    assert client.get_machine("m1") == {"id": "m1"}
    assert len(srv.requests) == 3


def test_client_timeout_and_refused_are_unavailable(server_factory):
    def slow(_head):
        time.sleep(0.5)
        return _ok()
    srv = server_factory([slow])
    client = MetalAPIClient(srv.url, KEY, timeout=0.1, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(MetalAPIUnavailable, match="timed out"):
        client.get_machine("m1")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    client = MetalAPIClient(f"http://127.0.0.1:{port}", KEY, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(MetalAPIUnavailable, match="unreachable .*ConnectError"):
        client.get_machine("m1")
