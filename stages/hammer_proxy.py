"""The hammer_proxy stage: metal-core's HTTP API for metal-hammer (metalcore/hammer), served by waitress.

Why waitress (docs/hammer-proxy.md has the measurements): an install long-poll holds its request for
up to ~30 s while the Metal API waits for an allocation. waitress gives each request a thread from a
fixed pool, so ``settings.hammer_threads`` threads hold that many long-polls, with plain blocking code,
the Metal API client's blocking HTTP pool and plain pyzmq (the bus) — no monkey-patching, which gevent
would need and which pyzmq's blocking sockets (the IPMI job client's thread) do not survive without
zmq.green. Its event loop is told to use poll(), not select(), so it is not capped at 1024 sockets.
One process forwards ≈ 1,300 short requests/s on 2 cores (docs/benchmarks-hammer.md), so it is not
pre-forked (each worker would need its own bus socket name).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import waitress
from loguru import logger

from metalcore.clients import MetalAPIClient
from metalcore.hammer import close_app, create_app
from metalcore.hammer.context import EXTENSION, MAX_BODY_BYTES
from metalcore.net.netns import in_netns
from metalcore.stage import Stage, run

# Short requests still in progress get this long to finish on SIGTERM; long-polls are cut (metal-hammer
# asks again) after it.
DRAIN_SECONDS = 10.0


def listen(host: str, port: int, netns: str = "") -> socket.socket:
    """The listening socket, opened in ``netns`` (where the booting machines are). Only the socket: the
    server's threads must stay in our own namespace, where the Metal API is."""
    with in_netns(netns):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def serve(app: Any, host: str, port: int, threads: int, netns: str = ""):
    """A waitress server for ``app`` (not yet running): ``server.run()`` serves, ``server.close()`` stops."""
    return waitress.create_server(
        app, sockets=[listen(host, port, netns)], threads=threads,
        # one socket per waiting machine plus keep-alive connections of everything else
        connection_limit=max(1000, threads * 2), backlog=2048, asyncore_use_poll=True,
        # a channel idle longer than a long-poll (~40 s) plus slack is a dead client
        channel_timeout=120, cleanup_interval=30,
        max_request_body_size=MAX_BODY_BYTES + 1024, ident="metalcore")


def _in_loop(server: Any, fn: Any) -> None:
    """Run ``fn`` in waitress' loop thread (its channel map is not thread-safe) and wait for it."""
    done = threading.Event()

    def call() -> None:
        try:
            fn()
        finally:
            done.set()
    server.trigger.pull_trigger(call)
    done.wait(5)


def stop_accepting(server: Any) -> None:
    """Close the listening socket: new connections are refused, running requests go on."""
    import waitress.wasyncore as wasyncore
    _in_loop(server, lambda: wasyncore.dispatcher.close(server))


def shutdown(server: Any, thread: threading.Thread | None = None) -> None:
    """Stop a server made by :func:`serve`: listener, worker threads, remaining channels, loop."""
    import waitress.wasyncore as wasyncore

    def close_listener() -> None:
        if server.socket is not None:
            wasyncore.dispatcher.close(server)

    def close_rest() -> None:
        for channel in list(server._map.values()):
            if channel is not server.trigger:
                channel.close()
        server.trigger.close()

    _in_loop(server, close_listener)
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=2)
    server.trigger.pull_trigger(close_rest)
    if thread is not None:
        thread.join(5)


class HammerProxyStage(Stage):
    name = "hammer_proxy"

    def start(self) -> None:
        s = self.settings
        # one pooled connection per possible long-poll, so a waiting machine never waits for a socket
        self.metal_api = MetalAPIClient(s.metal_api_url, s.hmac_key, timeout=s.metal_api_timeout,
                                        max_connections=s.hammer_threads + 16)
        self.app = create_app(s, self.metal_api, self.publisher)
        self.server = serve(self.app, s.bind_address, s.port, s.hammer_threads, s.netns)
        self.thread = threading.Thread(target=self.server.run, name="hammer-http", daemon=True)
        self.thread.start()
        logger.info("hammer proxy listening on {}:{}{} ({} threads), Metal API {}", s.bind_address,
                    self.server.effective_port, f" in netns {s.netns}" if s.netns else "", s.hammer_threads,
                    s.metal_api_url)

    def stop(self) -> None:
        c = self.app.extensions[EXTENSION]
        deadline = time.monotonic() + DRAIN_SECONDS
        # stop accepting first, then let short requests finish; long-polls do not count
        stop_accepting(self.server)
        while c.in_flight - c.long_polls > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        shutdown(self.server, self.thread)
        close_app(self.app)
        self.metal_api.close()

    def stats(self) -> dict[str, Any]:
        c = self.app.extensions[EXTENSION] if hasattr(self, "app") else None
        return {"jobs_in_flight": c.in_flight if c else 0, "long_polls": c.long_polls if c else 0,
                "boot_order_jobs": c.jobs.in_flight() if c and c.jobs else 0}


main = run(HammerProxyStage)

if __name__ == "__main__":
    main()
