"""SendfilePump (metalcore/pxe/sendfile.py): real TCP sockets on 127.0.0.1, a real event loop, real files.

Many transfers at once arrive whole; short transfers back to back (descriptor numbers are reused: a late
cleanup of a finished transfer once closed the next one's socket); a peer that resets, a cancelled
transfer and a file shorter than asked each end their transfer with the bytes sent reported and no
descriptor left open; the loop keeps running other callbacks while transfers are under way.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import socket
import threading

import pytest

from metalcore.pxe.sendfile import SendfilePump

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def blob(tmp_path_factory):
    p = tmp_path_factory.mktemp("sf") / "blob"
    p.write_bytes(os.urandom(4 << 20))
    return p


def _inodes(socks) -> set[int]:
    return {os.fstat(s.fileno()).st_ino for s in socks}


def _still_open(inodes: set[int]) -> list[str]:
    """Descriptors of this process still pointing at one of these sockets (a dup the pump did not close).
    By inode, not by count: other tests' threads in this process open and close descriptors meanwhile."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            out.append(fd)
    return out


async def _pairs(n: int, rcvbuf: int | None = None):
    """n connected (server side non-blocking, client side blocking) TCP socket pairs."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(n)
    out = []
    for _ in range(n):
        c = socket.socket()
        if rcvbuf:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        c.connect(lst.getsockname())
        s, _ = lst.accept()
        s.setblocking(False)
        out.append((s, c))
    lst.close()
    return out


def _reader(sock: socket.socket, into: list, want: int) -> threading.Thread:
    def run() -> None:
        h, got = hashlib.sha256(), 0
        while got < want:
            b = sock.recv(1 << 20)
            if not b:
                break
            h.update(b)
            got += len(b)
        into.append((got, h.hexdigest()))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _run(coro):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()



async def _finish(loop, pump, readers, pairs) -> None:
    """Wait for the reader threads, then close the pump and both ends of every socket pair."""
    for t in readers:
        await loop.run_in_executor(None, t.join, 20)
    pump.close()
    for s, c in pairs:
        s.close()
        c.close()

def test_many_transfers_at_once_arrive_whole_with_bounded_chunks(blob):
    data = blob.read_bytes()
    ranges = [(i * 65_537 % len(data), len(data) - i * 65_537 % len(data)) for i in range(24)]

    async def main():
        loop = asyncio.get_running_loop()
        pump = SendfilePump(loop, max_chunk=256 << 10).open()
        pairs = await _pairs(len(ranges))
        results: list = []
        readers = [_reader(c, results, n) for (s, c), (_o, n) in zip(pairs, ranges)]
        with open(blob, "rb") as f:
            sent = await asyncio.gather(*(pump.send(s, f.fileno(), o, n) for (s, _c), (o, n) in zip(pairs, ranges)))
        for t in readers:
            await loop.run_in_executor(None, t.join, 20)
        pump.close()
        inodes = _inodes(s for s, _c in pairs)
        for s, c in pairs:
            s.close()
            c.close()
        return sent, results, inodes

    sent, results, inodes = _run(main())
    assert sent == [n for _o, n in ranges]
    want = sorted((n, hashlib.sha256(data[o:o + n]).hexdigest()) for o, n in ranges)
    assert sorted(results) == want
    assert _still_open(inodes) == []  # every dup() closed


def test_short_transfers_back_to_back_reuse_descriptors_safely(blob):
    """8 connections, each sending 25 small ranges one after the other: transfers finishing in the same
    pump run resume in turn, and one's next send() gets the descriptor number another just closed before
    that other's cleanup ran (that cleanup once closed the new socket: the transfer hung)."""
    data = blob.read_bytes()
    # sizes from 1 byte to ~600 KB in 64 KiB chunks: transfers finish in an order unlike their start's
    sizes = [[1 + ((i * 8 + k) * 7919) % (600 << 10) for i in range(25)] for k in range(8)]

    async def main():
        loop = asyncio.get_running_loop()
        pump = SendfilePump(loop, max_chunk=64 << 10).open()
        pairs = await _pairs(8)
        results: list = []
        readers = [_reader(c, results, sum(sz)) for (_s, c), sz in zip(pairs, sizes)]
        with open(blob, "rb") as f:
            async def conn(s, k):
                return [await pump.send(s, f.fileno(), k, n) for n in sizes[k]]
            sent = await asyncio.wait_for(asyncio.gather(*(conn(s, k) for k, (s, _c) in enumerate(pairs))), 20)
        await _finish(loop, pump, readers, pairs)
        return sent, results

    sent, results = _run(main())
    assert sent == sizes
    want = sorted((sum(sz), hashlib.sha256(b"".join(data[k:k + n] for n in sz)).hexdigest())
                  for k, sz in enumerate(sizes))
    assert sorted(results) == want


def test_peer_reset_cancel_and_short_file_end_the_transfer_and_report_bytes_sent(blob, tmp_path):
    short = tmp_path / "short"
    short.write_bytes(b"x" * 1000)

    async def main():
        loop = asyncio.get_running_loop()
        pump = SendfilePump(loop).open()
        (s1, c1), (s2, c2), (s3, c3) = await _pairs(3, rcvbuf=4096)
        counted: dict = {}
        with open(blob, "rb") as f, open(short, "rb") as g:
            # 1: the client resets the connection while the server is blocked on a full buffer
            t1 = asyncio.ensure_future(pump.send(s1, f.fileno(), 0, 4 << 20, on_sent=lambda n: counted.__setitem__(1, n)))
            await asyncio.sleep(0.2)
            c1.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c1.close()
            with pytest.raises(OSError):
                await asyncio.wait_for(t1, 10)
            # 2: the request is cancelled (aiohttp does so when the client goes away)
            t2 = asyncio.ensure_future(pump.send(s2, f.fileno(), 0, 4 << 20, on_sent=lambda n: counted.__setitem__(2, n)))
            await asyncio.sleep(0.2)
            t2.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t2
            # 3: the file is shorter than the count asked
            with pytest.raises(EOFError):
                await asyncio.wait_for(pump.send(s3, g.fileno(), 0, 5000, on_sent=lambda n: counted.__setitem__(3, n)), 10)
        pump.close()
        inodes = _inodes((s1, s2, s3))
        for s in (s1, s2, s3, c2, c3):
            s.close()
        return counted, inodes

    counted, inodes = _run(main())
    assert 0 < counted[1] < 4 << 20 and 0 < counted[2] < 4 << 20 and counted[3] == 1000
    assert _still_open(inodes) == []


def test_loop_keeps_running_other_work_while_transfers_run(blob):
    """A burst is bounded: a timer due every 10 ms keeps firing while 8 fast readers take 4 MB each."""
    async def main():
        loop = asyncio.get_running_loop()
        pump = SendfilePump(loop).open()
        pairs = await _pairs(8)
        results: list = []
        readers = [_reader(c, results, 4 << 20) for _s, c in pairs]
        ticks: list = [loop.time()]  # the start and the end count too: a fast run may see no timer at all

        async def ticker():
            while True:
                ticks.append(loop.time())
                await asyncio.sleep(0.01)
        tk = asyncio.ensure_future(ticker())
        with open(blob, "rb") as f:
            await asyncio.gather(*(pump.send(s, f.fileno(), 0, 4 << 20) for s, _c in pairs))
        ticks.append(loop.time())
        tk.cancel()
        await _finish(loop, pump, readers, pairs)
        return ticks, results

    ticks, results = _run(main())
    assert len(results) == 8 and all(n == 4 << 20 for n, _h in results)
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < 1.0, f"the event loop stalled {max(gaps):.2f} s during the transfers"


def test_boot_server_counts_the_bytes_of_a_broken_off_transfer_and_serves_on(tmp_path):
    """Through BootHttpServer: a client that stops reading, then resets, is counted with the part that left
    (not 0, not the file size); 8 clients at once then get the whole file, counted in full."""
    import http.client
    import time

    from metalcore.lab.pxe_stage import UpstreamFiles
    from metalcore.pxe.http import BootHttpServer
    from metalcore.pxe.metrics import PxeMetrics

    size = 8 << 20
    up_dir = tmp_path / "up"
    up_dir.mkdir()
    data = os.urandom(size)
    (up_dir / "initrd.img").write_bytes(data)
    up = UpstreamFiles(up_dir).start()
    srv = BootHttpServer(gate=None, netns="", bind_ip="127.0.0.1", port=0, public_base="http://127.0.0.1:0",
                         cache_dir=tmp_path / "cache", tftp_root=str(tmp_path), metrics=PxeMetrics()).start()
    path = f"/boot/{srv.cache.register(up.url('initrd.img'))}/initrd.img"
    before = srv.metrics.http_bytes.labels("boot")._value.get()  # the counter is per process, not per server

    def sent() -> float:
        return srv.metrics.http_bytes.labels("boot")._value.get() - before

    def wait(cond, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not cond():
            time.sleep(0.02)
        return cond()
    try:
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        c.request("GET", path, headers={"Range": "bytes=0-0"})  # fills the cache
        assert c.getresponse().read() == data[:1]
        c.close()
        assert wait(lambda: sent() == 1)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", srv.port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        assert wait(lambda: sent() > 1), sent()
        partial = sent() - 1
        assert 0 < partial < size, partial
        results: list = []

        def get() -> None:
            cc = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
            cc.request("GET", path)
            results.append(hashlib.sha256(cc.getresponse().read()).hexdigest())
            cc.close()
        ts = [threading.Thread(target=get) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert results == [hashlib.sha256(data).hexdigest()] * 8
        assert wait(lambda: sent() == 1 + partial + 8 * size), (sent(), 1 + partial + 8 * size)
    finally:
        srv.stop()
        up.stop()
