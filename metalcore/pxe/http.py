"""HTTP for booting machines: the per-MAC iPXE script, and the kernel/initrd proxied and cached.

Server: **aiohttp** (``web.AppRunner`` + ``web.SockSite`` on a socket we open inside the rack namespace),
in one thread with its own event loop. Why aiohttp:

* its ``FileResponse`` brings Range, HEAD, If-Modified-Since and ETag, and sends the body with
  ``os.sendfile`` (here through our ``SendfilePump``, metalcore/pxe/sendfile.py, rather than its
  ``loop.sendfile``): the kernel copies the page cache to the socket, no byte of a 100 MB initrd passes
  through Python (tornado's StaticFileHandler and waitress both read files into Python buffers);
* it is embeddable: it serves on a socket we hand it (the socket keeps the namespace it was made in,
  metalcore/net/netns.py), in a thread of the stage process, next to the raw socket. gunicorn also
  sendfiles, but it wants to be the process (arbiter, fork, signals) and could not share the stage's
  boot decider and metrics;
* one event loop carries many slow clients (a rack booting at once) without a thread each.

Routes:
  GET /ipxe/{mac}            #!ipxe script: kernel + initrd from this server, cmdline from the shared decision;
                             a machine that must not PXE boot gets a script that exits to the next boot device
  GET /boot/{key}/{name}     a boot file; ``key`` = sha256(upstream URL)[:16], known only after a script
                             named it (no open proxy). First fetch: downloaded once into the cache (all
                             concurrent requests wait for the one download), then served with sendfile
  GET /efi/{name}            iPXE binaries from tftp_root for UEFI HTTP boot clients
  GET /healthz
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from loguru import logger

from metalcore.boot import normalize_mac
from metalcore.net.netns import in_netns
from metalcore.protocol.ipxe import render_boot_script, render_exit_script
from metalcore.pxe.decisions import DecisionGate
from metalcore.pxe.metrics import PxeMetrics
from metalcore.pxe.sendfile import SendfilePump
from metalcore.pxe.tftp import resolve_inside

__all__ = ["BootFileCache", "BootFileResponse", "BootHttpServer", "url_key"]

# Cached files are revalidated against their upstream (conditional GET) at most this often; a partition's
# new initrd under the same URL is picked up within this time.
REVALIDATE_AFTER = 60.0
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=600, sock_connect=10, sock_read=60)
# On stop, transfers still running get this long, then their connections are closed: aiohttp's default
# (60 s) outlasted stop()'s own 10 s wait when a client had stopped reading, and stop() raised.
STOP_GRACE = 3.0


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def _basename(url: str) -> str:
    name = os.path.basename(urlsplit(url).path) or "file"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:64]


class BootFileCache:
    """Upstream URL -> local file. Lives on the server's event loop (not thread-safe by design)."""

    def __init__(self, directory: Path, metrics: PxeMetrics) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.metrics = metrics
        self.urls: dict[str, str] = {}  # key -> upstream URL (filled when a script names a file)
        self._fetching: dict[str, asyncio.Future] = {}
        self._checked: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0

    def register(self, url: str) -> str:
        key = url_key(url)
        self.urls[key] = url
        return key

    def path(self, key: str) -> Path:
        return self.dir / key

    async def ensure(self, key: str) -> Path:
        """The cached file of ``key``, downloading or revalidating it first if needed."""
        path = self.path(key)
        fresh = path.exists() and time.monotonic() - self._checked.get(key, -1e9) < REVALIDATE_AFTER
        if fresh:
            return path
        fut = self._fetching.get(key)
        if fut is None:
            fut = self._fetching[key] = asyncio.get_running_loop().create_future()
            try:
                await self._fetch(key, path)
                fut.set_result(path)
            except BaseException as e:
                fut.set_exception(e)
                fut.exception()  # retrieved: no "never retrieved" warning when nobody else waits
                raise
            finally:
                self._fetching.pop(key, None)
            return path
        try:
            return await asyncio.shield(fut)
        except web.HTTPException as e:
            # An aiohttp HTTPException is also the response object: the one instance raised to every
            # waiting request was prepared once and the other requests got no answer (a client hung
            # on a keep-alive connection when the upstream failed under 48 concurrent requests).
            raise type(e)(text=e.text) from None

    async def _fetch(self, key: str, path: Path) -> None:
        url = self.urls[key]
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=FETCH_TIMEOUT)
        headers = {}
        if path.exists():
            headers["If-Modified-Since"] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(path.stat().st_mtime))
        started = time.monotonic()
        tmp = path.with_name(f".{key}.{os.getpid()}.part")
        try:
            async with self._session.get(url, headers=headers) as resp:
                if resp.status == 304 and path.exists():
                    self._checked[key] = time.monotonic()
                    self.metrics.cache_fetch.labels("not_modified").observe(time.monotonic() - started)
                    return
                if resp.status != 200:
                    raise web.HTTPBadGateway(text=f"upstream {url} answered {resp.status}\n")
                with open(tmp, "wb") as f:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        f.write(chunk)
                lm = resp.headers.get("Last-Modified")
            if lm:
                try:
                    from email.utils import parsedate_to_datetime
                    ts = parsedate_to_datetime(lm).timestamp()
                    os.utime(tmp, (ts, ts))
                except (TypeError, ValueError):
                    pass
            os.replace(tmp, path)
        except aiohttp.ClientError as e:
            tmp.unlink(missing_ok=True)
            self.metrics.cache_fetch.labels("failed").observe(time.monotonic() - started)
            if path.exists():  # upstream down: the last good copy still boots machines
                logger.warning("revalidating {} failed ({}); serving the cached copy", url, e)
                self._checked[key] = time.monotonic()
                return
            raise web.HTTPBadGateway(text=f"fetching {url} failed: {e}\n") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.fetches += 1
        self._checked[key] = time.monotonic()
        self.metrics.cache_fetch.labels("fetched").observe(time.monotonic() - started)
        logger.info("cached {} ({} bytes) in {:.2f} s", url, path.stat().st_size, time.monotonic() - started)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class BootFileResponse(web.FileResponse):
    """aiohttp's FileResponse (Range, HEAD, conditional GET, ETag), whose body goes out through the
    server's ``SendfilePump`` (metalcore/pxe/sendfile.py: ``os.sendfile``, every transfer's socket in one
    edge-triggered epoll, at most 2 MiB per call) instead of ``loop.sendfile``, and which tells
    ``on_sent(n)`` the bytes of the body that left: a Range request's bytes, not the file's size, nothing
    for HEAD or 304, and the part sent of a transfer the client broke off.

    Sending stays on the event loop. A variant that gave each transfer a thread doing one blocking
    ``os.sendfile`` (the kernel waits for buffer space, no Python per chunk) was measured against
    ``loop.sendfile`` and nginx with 4 busy loops on the 2-core machine: 471 MB/s vs 636 (loop) vs 680
    (nginx), median of 6 interleaved rounds. Its 48 threads each need the scheduler for every wake-up, where
    one event loop, like nginx's worker, serves every writable socket in one wake-up (docs/benchmarks-pxe.md).
    """

    def __init__(self, path: Path, on_sent: Any, pump: SendfilePump | None = None, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._on_sent = on_sent
        self._pump = pump

    async def _sendfile(self, request: web.BaseRequest, fobj: Any, offset: int, count: int) -> Any:
        if self._pump is None:
            writer = await super()._sendfile(request, fobj, offset, count)
            self._on_sent(count)
            return writer
        # StreamResponse.prepare, as FileResponse._sendfile itself calls it (FileResponse.prepare would
        # recurse): the status line and headers are written to the transport now (sent immediately).
        writer = await web.StreamResponse.prepare(self, request)
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("Connection lost")
        sock = transport.get_extra_info("socket")
        if transport.get_write_buffer_size() or sock is None:
            # The headers did not fit into the socket at once: asyncio's path waits for them to drain.
            await asyncio.get_running_loop().sendfile(transport, fobj, offset, count)
            self._on_sent(count)
        else:
            await self._pump.send(sock, fobj.fileno(), offset, count, on_sent=self._on_sent)
        await web.StreamResponse.write_eof(self)
        return writer


class BootHttpServer:
    """aiohttp in its own thread; ``start()`` returns once it listens."""

    def __init__(self, *, gate: DecisionGate, netns: str, bind_ip: str, port: int, public_base: str,
                 cache_dir: Path, tftp_root: str, metrics: PxeMetrics, decision_timeout: float = 20.0) -> None:
        self.gate = gate
        self.netns = netns
        self.bind_ip = bind_ip
        self.port = port
        self.public_base = public_base.rstrip("/")
        self.tftp_root = tftp_root
        self.metrics = metrics
        self.decision_timeout = decision_timeout
        self.cache = BootFileCache(cache_dir, metrics)
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self.pump = SendfilePump(self.loop)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pxe-http", daemon=True)

    # --- life cycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "BootHttpServer":
        with in_netns(self.netns):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.bind_ip, self.port))
        s.listen(1024)
        s.setblocking(False)
        self.port = s.getsockname()[1]
        self._sock = s
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"HTTP server did not start: {self._error}")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.pump.open()
            app = self.make_app()
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=STOP_GRACE)
            self.loop.run_until_complete(self._runner.setup())
            self.loop.run_until_complete(web.SockSite(self._runner, self._sock).start())
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            self.pump.close()
            await self.cache.close()
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)

    # --- the app --------------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ipxe/{mac}", self.ipxe_script)
        app.router.add_get("/boot/{key}/{name}", self.boot_file)
        app.router.add_get("/efi/{name}", self.efi_file)
        app.router.add_get("/healthz", self.healthz)
        return app

    def _count(self, route: str, status: int) -> None:
        self.metrics.http.labels(route, str(status)).inc()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def ipxe_script(self, request: web.Request) -> web.Response:
        try:
            mac = normalize_mac(request.match_info["mac"])
        except ValueError:
            self._count("ipxe", 400)
            return web.Response(status=400, text="not a MAC address\n")
        decision = await self.loop.run_in_executor(None, self.gate.wait, mac, self.decision_timeout)
        log = logger.bind(mac=mac, machine_id=decision.machine_id if decision else None)
        if decision is None or decision.response is None:
            why = decision.reason if decision else "no boot decision in time"
            log.info("iPXE script for {}: not booting over the network ({})", mac, why)
            self._count("ipxe", 200)
            return web.Response(text=render_exit_script("metalcore: no network boot for this machine"),
                                content_type="text/plain")
        resp = decision.response
        kernel = self._local_url(resp.kernel)
        initrds = [self._local_url(u) for u in resp.initrd]
        script = render_boot_script(kernel, initrds, resp.cmdline)
        log.info("iPXE script for {}: {} ({})", mac, resp.kernel, decision.reason)
        self._count("ipxe", 200)
        return web.Response(text=script, content_type="text/plain")

    def _local_url(self, upstream: str) -> str:
        key = self.cache.register(upstream)
        return f"{self.public_base}/boot/{key}/{_basename(upstream)}"

    async def boot_file(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        if key not in self.cache.urls:
            self._count("boot", 404)
            raise web.HTTPNotFound(text="unknown boot file (no iPXE script named it)\n")
        try:
            path = await self.cache.ensure(key)
        except web.HTTPException as e:
            self._count("boot", e.status)
            raise
        self._count("boot", 200)
        return BootFileResponse(path, self.metrics.http_bytes.labels("boot").inc, self.pump, chunk_size=1 << 20,
                                headers={"Content-Type": "application/octet-stream"})

    async def efi_file(self, request: web.Request) -> web.StreamResponse:
        path = resolve_inside(self.tftp_root, request.match_info["name"])
        if path is None:
            self._count("efi", 404)
            raise web.HTTPNotFound()
        self._count("efi", 200)
        self.metrics.http_bytes.labels("efi").inc(path.stat().st_size)
        return web.FileResponse(path, headers={"Content-Type": "application/efi"})

    def info(self) -> dict[str, Any]:
        return {"port": self.port, "cached_urls": len(self.cache.urls), "fetches": self.cache.fetches}
