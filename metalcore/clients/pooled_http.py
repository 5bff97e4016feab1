"""A small keep-alive HTTP/1.1 client: the Metal API client's hot path.

Why not httpx here: for one small JSON call to a fast upstream, httpx spends ≈ 400 µs of CPU in Python
(request model, URL parsing, auth flow, httpcore + h11 state machines) and http.client ≈ 90 µs (its
header parsing goes through the email package); this module does the same exchange in ≈ 30 µs
(docs/benchmarks-hammer.md). The hammer proxy makes one such call per forwarded request.

It speaks exactly what a client of metal-api needs: a request with a small in-memory body, an answer
framed by Content-Length, chunked transfer coding, or the end of the connection (RFC 9112 §6.3);
1xx interim answers skipped; keep-alive unless the server says close (or is HTTP/1.0 without
keep-alive) or the body ran to the end of the connection. No HTTP/2, proxies, compression
(``Accept-Encoding`` is not sent), redirects or streaming.

What the pool guarantees (the same as the httpx pool it replaces):

* at most ``max_connections`` connections in use at once; a caller waits up to its timeout for one
  and then gets :class:`PoolTimeout` (a :class:`Timeout`);
* idle connections are reused most-recently-used first; one the server closed while it was idle (or
  that holds unexpected bytes) is noticed before reuse (a zero-timeout poll, as httpcore does) and
  dropped, so a request is never written onto a dead socket knowingly;
* the timeout applies to each socket operation (connect, each send, each receive), like httpx's
  ``Timeout(t)``;
* errors come out as two kinds only: :class:`Timeout` (the peer was too slow) and
  :class:`Unreachable` (refused, reset, closed, not HTTP); the caller maps them. A connection that saw
  any error is closed, never reused.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from urllib.parse import urlsplit

__all__ = ["Answer", "ConnectionPool", "PoolTimeout", "Timeout", "TransportFailure", "Unreachable"]

# An answer's status line and headers together; metal-api's are a few hundred bytes.
MAX_HEAD_BYTES = 64 << 10
RECV_BYTES = 256 << 10
_METHODS_WITH_BODY = frozenset(("POST", "PUT", "PATCH"))


class TransportFailure(Exception):
    """The exchange did not produce an HTTP answer. ``kind`` names what failed with httpx's names
    (ConnectError, ReadTimeout, RemoteProtocolError...), which logs and tests already know."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


class Timeout(TransportFailure):
    """A connect, send or receive took longer than the timeout."""


class PoolTimeout(Timeout):
    """All ``max_connections`` connections stayed busy for the whole timeout."""


class Unreachable(TransportFailure):
    """Refused, reset, closed before answering, or not HTTP."""


class Answer:
    """One HTTP answer, fully read: status, body bytes, and what was asked (for error texts)."""

    __slots__ = ("status_code", "content", "method", "path", "content_type")

    def __init__(self, status_code: int, content: bytes, method: str, path: str, content_type: str = "") -> None:
        self.status_code = status_code
        self.content = content
        self.method = method
        self.path = path
        self.content_type = content_type

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"Answer({self.status_code}, {self.method} {self.path}, {len(self.content)} bytes)"


class ProtocolError(Exception):
    """The peer's bytes are not an HTTP/1.x answer we can frame."""


class _Connection:
    """One HTTP/1.1 connection: send a request, read its answer. Not thread-safe (the pool hands it to
    one caller at a time)."""

    __slots__ = ("sock", "buf", "host_header")

    def __init__(self, sock: socket.socket, host_header: str) -> None:
        self.sock = sock
        self.buf = b""
        self.host_header = host_header

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> None:
        if "\r" in target or "\n" in target or " " in target:
            raise ValueError(f"request target must be quoted: {target!r}")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
        for k, v in headers.items():
            if "\r" in v or "\n" in v:
                raise ValueError(f"header {k} holds a line break")
            lines.append(f"{k}: {v}")
        if body is not None or method in _METHODS_WITH_BODY:
            lines.append(f"Content-Length: {len(body) if body else 0}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.sock.sendall(data + body if body else data)

    def read_answer(self, method: str) -> tuple[int, dict[str, str], bytes, bool]:
        """(status, headers with lower-case names, body, reusable)."""
        while True:
            version, status, fields = self._read_head()
            if 100 <= status < 200 and status != 101:
                continue  # interim answer (103 Early Hints, an unasked 100): the real one follows
            break
        conn_tokens = {t.strip().lower() for t in fields.get("connection", "").split(",")}
        reusable = ("close" not in conn_tokens) if version == "HTTP/1.1" else ("keep-alive" in conn_tokens)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            content = b""
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            content = self._read_chunked()
        elif "content-length" in fields:
            try:
                length = int(fields["content-length"])
            except ValueError:
                raise ProtocolError(f"bad Content-Length {fields['content-length']!r}") from None
            if length < 0:
                raise ProtocolError(f"bad Content-Length {length}")
            content = self._read_exact(length)
        else:
            content = self._read_to_eof()
            reusable = False
        if self.buf:
            reusable = False  # bytes nobody asked for: do not let them answer the next request
        return status, fields, content, reusable

    def _recv(self) -> bytes:
        return self.sock.recv(RECV_BYTES)

    def _read_head(self) -> tuple[str, int, dict[str, str]]:
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > MAX_HEAD_BYTES:
                raise ProtocolError(f"answer head over {MAX_HEAD_BYTES} bytes")
            chunk = self._recv()
            if not chunk:
                raise ProtocolError("server closed the connection without answering" if not buf
                                    else "server closed the connection in the middle of the answer head")
            buf += chunk
        head, self.buf = buf[:end].decode("latin-1"), buf[end + 4:]
        status_line, _, rest = head.partition("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
            raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        fields: dict[str, str] = {}
        for line in rest.split("\r\n") if rest else ():
            name, sep, value = line.partition(":")
            if not sep:
                continue  # obs-fold or junk: nothing we frame by
            name = name.strip().lower()
            value = value.strip()
            fields[name] = f"{fields[name]}, {value}" if name in fields else value
        return parts[0], int(parts[1]), fields

    def _read_exact(self, n: int) -> bytes:
        buf = self.buf
        if len(buf) < n:
            parts = [buf]
            have = len(buf)
            while have < n:
                chunk = self._recv()
                if not chunk:
                    raise ProtocolError(f"server closed the connection {n - have} bytes before the end of the body")
                parts.append(chunk)
                have += len(chunk)
            buf = b"".join(parts)
        self.buf = buf[n:]
        return buf[:n]

    def _read_line(self) -> bytes:
        buf = self.buf
        while True:
            end = buf.find(b"\r\n")
            if end >= 0:
                self.buf = buf[end + 2:]
                return buf[:end]
            if len(buf) > MAX_HEAD_BYTES:
                raise ProtocolError("chunk header line too long")
            chunk = self._recv()
            if not chunk:
                raise ProtocolError("server closed the connection inside a chunked body")
            buf += chunk
            self.buf = buf

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            line = self._read_line()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                while self._read_line():  # trailer fields, up to the empty line
                    pass
                return b"".join(parts)
            parts.append(self._read_exact(size))
            if self._read_exact(2) != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")

    def _read_to_eof(self) -> bytes:
        parts = [self.buf]
        self.buf = b""
        while True:
            chunk = self._recv()
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)


def _dead(sock: socket.socket | None) -> bool:
    """True if an idle keep-alive socket is unusable: closed by the peer (readable at EOF) or holding
    bytes nobody asked for. poll(), not select(): fds above 1024 are normal with 600+ connections."""
    if sock is None:
        return True
    try:
        p = select.poll()
        p.register(sock, select.POLLIN)
        return bool(p.poll(0))
    except (OSError, ValueError):
        return True


class ConnectionPool:
    """Keep-alive connections to one origin (``http://host:port/base`` or ``https://...``). Thread-safe."""

    def __init__(self, base_url: str, *, max_connections: int = 20, timeout: float = 15.0,
                 headers: dict[str, str] | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"need an http(s) URL with a host, got {base_url!r}")
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = 443 if u.scheme == "https" else 80
        self.host_header = host if self.port == default_port else f"{host}:{self.port}"
        self.base_path = u.path.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})
        self._ssl = ssl_context if u.scheme == "https" else None
        if u.scheme == "https" and self._ssl is None:
            self._ssl = ssl.create_default_context()  # system CAs; SSL_CERT_FILE/SSL_CERT_DIR honoured
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closed = False

    def __repr__(self) -> str:
        return f"ConnectionPool({self.scheme}://{self.host_header}{self.base_path}, idle={len(self._idle)})"

    def _new(self, timeout: float) -> _Connection:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock, self.host_header)

    def _take(self, timeout: float) -> _Connection:
        """A connection: the most recently used idle one that is still alive, else a new one."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._new(timeout)
            if _dead(conn.sock):
                conn.close()
                continue
            conn.sock.settimeout(timeout)
            return conn

    def _give_back(self, conn: _Connection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float | None = None) -> Answer:
        """Send ``method`` ``base_path + path`` (path starts with "/", already quoted) and read the answer."""
        timeout = self.timeout if timeout is None else timeout
        url = self.base_path + path
        if self._closed:
            raise Unreachable("ConnectError", "connection pool is closed")
        if not self._slots.acquire(timeout=timeout):
            raise PoolTimeout("PoolTimeout", f"no free connection within {timeout:g}s")
        try:
            all_headers = {**self.headers, **headers} if headers else self.headers
            try:
                conn = self._take(timeout)
            except (TimeoutError, socket.timeout) as e:  # socket.timeout is TimeoutError since 3.10
                raise Timeout("ConnectTimeout", str(e)) from None
            except OSError as e:
                raise Unreachable("ConnectError", str(e)) from None
            phase = "Write"
            try:
                conn.send(method, url, all_headers, body)
                phase = "Read"
                status, fields, content, reusable = conn.read_answer(method)
            except (TimeoutError, socket.timeout) as e:
                conn.close()
                raise Timeout(f"{phase}Timeout", str(e)) from None
            except ProtocolError as e:
                conn.close()
                raise Unreachable("RemoteProtocolError", str(e)) from None
            except OSError as e:
                conn.close()
                raise Unreachable(f"{phase}Error", str(e)) from None
            except BaseException:
                conn.close()
                raise
            if reusable:
                self._give_back(conn)
            else:
                conn.close()
            return Answer(status, content, method, url, fields.get("content-type", ""))
        finally:
            self._slots.release()

    def close(self) -> None:
        """Close idle connections; ones in use are closed when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    @property
    def idle(self) -> int:
        return len(self._idle)
