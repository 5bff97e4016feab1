"""File ranges to sockets with ``os.sendfile``, for all transfers of an event loop in one pump.

Why not ``loop.sendfile`` (asyncio's ``_sock_sendfile_native_impl``), measured with 48 clients x 100 MB on
the lab's veth, 4 busy loops, perf tracepoints on the stage during one round:

* per chunk it removes the socket's writer and adds it again (~3,900 ``epoll_ctl`` per round; nginx: 96),
  and runs one asyncio Handle per socket per wake-up;
* it asks for the whole rest of the file per call (2.6 MB per call on average; nginx ~1 MB, its
  ``sendfile_max_chunk``), so a connection takes all its buffer room before the next one is served;
* the stage spent 0.19-0.25 s of user CPU per 4.8 GB round against nginx's 0.01-0.02 s, with about the
  same system time.

The pump does what nginx's worker does: every transfer's socket sits in one private epoll, edge-triggered
for writing, registered once; that epoll's descriptor is one reader in the asyncio loop. When it fires,
one callback sends at most ``max_chunk`` to each writable socket in turn until each has answered EAGAIN
(``posted`` below) or finished, so one wake-up serves every connection a bounded share, and Python runs a
few lines per ``sendfile`` call. A burst is bounded (``MAX_CALLS_PER_RUN``) so iPXE scripts and new
requests on the same loop still get their turn.

Measured outcome (docs/benchmarks-pxe.md, runs of 08:15-08:30): the syscall profile is now nginx's (192
``epoll_ctl`` per round, ~1-1.6 MB per call) and every run stayed >= 0.86x of either nginx, but the
throughput against ``loop.sendfile`` in interleaved runs (0.85-0.93x of nginx workers=1) is within this
machine's noise, and the stage's user CPU (0.1-0.2 s per round) barely moved: it is not spent per chunk.

Sockets are registered as a ``dup()``: the transport keeps its own registration in the loop (reading: a
client that closes its connection still cancels its request, which cancels the transfer here).
"""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_MAX_CHUNK", "MAX_CALLS_PER_RUN", "SendfilePump"]

# nginx's sendfile_max_chunk default (2m since 1.21.4); its calls averaged ~1 MB in our runs, the rest
# being bounded by the socket's buffer room.
DEFAULT_MAX_CHUNK = 2 << 20
# sendfile calls per callback before the pump yields to the loop (~1 MB each on average, 2 MiB at most:
# some tens of ms of kernel work at ~3 GB/s, the iPXE script of a machine waiting meanwhile).
MAX_CALLS_PER_RUN = 64


@dataclass
class _Transfer:
    fd: int  # our dup of the socket
    fileno: int
    offset: int
    count: int
    done: asyncio.Future
    sent: int = 0


class SendfilePump:
    """One per event loop; ``open()`` on the loop's thread, ``close()`` when the loop stops."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_chunk: int = DEFAULT_MAX_CHUNK) -> None:
        self.loop = loop
        self.max_chunk = max_chunk
        self._ep: select.epoll | None = None
        self._transfers: dict[int, _Transfer] = {}
        self._posted: dict[int, None] = {}  # fds that may have room, in turn order (dict: ordered set)
        self._scheduled = False

    def open(self) -> SendfilePump:
        self._ep = select.epoll()
        self.loop.add_reader(self._ep.fileno(), self._on_events)
        return self

    def close(self) -> None:
        for t in list(self._transfers.values()):
            self._finish(t, ConnectionAbortedError("server stopping"))
        if self._ep is not None:
            self.loop.remove_reader(self._ep.fileno())
            self._ep.close()
            self._ep = None

    async def send(self, sock: Any, fileno: int, offset: int, count: int,
                   on_sent: Callable[[int], Any] | None = None) -> int:
        """Send ``count`` bytes of ``fileno`` from ``offset`` to the non-blocking socket ``sock``; returns the
        bytes sent and, if given, calls ``on_sent(n)`` once with the bytes that left, also when the transfer
        failed or was cancelled half-way. Raises ``OSError`` (e.g. ``BrokenPipeError``) if the peer goes
        away, ``EOFError`` if the file is shorter than asked. Cancelling the awaiting task stops the
        transfer at once. Whatever the caller wrote to ``sock`` before must have left its user-space buffer
        (the headers): these bytes bypass it."""
        if count <= 0:
            return 0
        if self._ep is None:
            raise RuntimeError("SendfilePump is not open")
        t = _Transfer(os.dup(sock.fileno()), fileno, offset, count, self.loop.create_future())
        self._transfers[t.fd] = t
        try:
            self._ep.register(t.fd, select.EPOLLOUT | select.EPOLLET)
            self._post(t.fd)  # a fresh socket has room: no need to wait for the first edge
            await t.done
        finally:
            self._finish(t, None)
            if on_sent is not None and t.sent:
                on_sent(t.sent)
        return t.sent

    # --- the pump ---------------------------------------------------------------------------------
    def _post(self, fd: int) -> None:
        self._posted[fd] = None
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._run)

    def _on_events(self) -> None:
        if self._ep is None:
            return
        for fd, _mask in self._ep.poll(0):
            if fd in self._transfers:
                self._posted[fd] = None
        if self._posted and not self._scheduled:
            self._scheduled = True
            self._run()

    def _run(self) -> None:
        self._scheduled = False
        calls = 0
        posted, transfers, sendfile, chunk = self._posted, self._transfers, os.sendfile, self.max_chunk
        while posted and calls < MAX_CALLS_PER_RUN:
            for fd in list(posted):
                t = transfers.get(fd)
                if t is None:
                    posted.pop(fd, None)
                    continue
                calls += 1
                try:
                    n = sendfile(fd, t.fileno, t.offset + t.sent, min(t.count - t.sent, chunk))
                except (BlockingIOError, InterruptedError):
                    posted.pop(fd, None)  # no room: the next edge posts it again
                    continue
                except OSError as e:
                    self._finish(t, e)
                    continue
                if n == 0:
                    self._finish(t, EOFError(f"file ended after {t.sent} of {t.count} bytes"))
                    continue
                t.sent += n
                if t.sent >= t.count:
                    self._finish(t, None)
        if posted and not self._scheduled:  # burst bound reached: let the loop run, then go on
            self._scheduled = True
            self.loop.call_soon(self._run)

    def _finish(self, t: _Transfer, exc: BaseException | None) -> None:
        # By identity, not by descriptor: once a transfer's dup is closed, the next transfer may get the
        # same number, and the first one's late cleanup (its task resumes after ours started) must not
        # close the new one's socket (a client hung with 0 body bytes in a test before this check).
        if self._transfers.get(t.fd) is not t:
            return
        del self._transfers[t.fd]
        self._posted.pop(t.fd, None)
        if self._ep is not None:
            try:
                self._ep.unregister(t.fd)
            except (OSError, ValueError):
                pass
        os.close(t.fd)
        if not t.done.done():
            if exc is None:
                t.done.set_result(None)
            else:
                t.done.set_exception(exc)
