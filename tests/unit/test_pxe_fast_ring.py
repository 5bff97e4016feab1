"""RxRing (the TPACKET_V2 receive-ring reader) over a hand-filled anonymous mmap: ring order, wrap-around,
slots handed back, and headers that lie (garbage offsets, truncated frames) never stop the packet loop.
The same reader on a real kernel ring: tests/integration/test_pxe_fast_ring.py."""
from __future__ import annotations

import mmap
import random
import struct
import time

import pytest

from metalcore.lab.pxe_client import bench_mac, discover_frame
from metalcore.pxe.metrics import PxeMetrics
from metalcore.pxe.rawsock import TP_STATUS_CSUMNOTREADY, TP_STATUS_USER, RxRing
from metalcore.pxe.watch import Watcher

FRAME = 2048
MAC_OFF = 66  # where the kernel puts the MAC header in a TPACKET_V2 slot (TPACKET_ALIGN(32 + 20) + 16 - 14)


class KernelSide:
    """Plays the kernel: writes frames into the next slots, as tpacket_rcv does."""

    def __init__(self, frames: int = 8) -> None:
        self.n = frames
        self.buf = mmap.mmap(-1, FRAME * frames)
        self.head = 0
        self.waits = 0

    def put(self, frame: bytes, *, pkttype: int = 1, status: int = TP_STATUS_USER, snaplen: int | None = None,
            length: int | None = None, mac: int = MAC_OFF) -> None:
        off = self.head * FRAME
        assert struct.unpack_from("I", self.buf, off)[0] == 0, "ring full: the reader did not hand the slot back"
        snap = len(frame) if snaplen is None else snaplen
        body = frame[:max(0, min(snap, FRAME - mac))] if 0 <= mac < FRAME else b""
        self.buf[off + mac:off + mac + len(body)] = body
        struct.pack_into("IIIHH", self.buf, off, 0, len(frame) if length is None else length, snap, mac,
                         (mac + 14) & 0xFFFF)
        self.buf[off + 42] = pkttype  # sockaddr_ll.sll_pkttype
        struct.pack_into("I", self.buf, off, status)  # last: the status publishes the slot
        self.head = (self.head + 1) % self.n

    def status(self, i: int) -> int:
        return struct.unpack_from("I", self.buf, i * FRAME)[0]

    def wait(self, ms: int) -> bool:
        self.waits += 1
        return any(self.status(i) & TP_STATUS_USER for i in range(self.n))

    def ring(self) -> RxRing:
        r = RxRing(self.buf, FRAME, self.n, self.wait)
        r.timeout_ms = 0
        return r


def test_frames_come_back_in_ring_order_with_their_flags_and_slots_are_handed_back():
    k = KernelSide(4)
    r = k.ring()
    frames = [discover_frame(bench_mac(i), i + 1) for i in range(10)]  # wraps the 4-slot ring twice
    got = []
    for i, f in enumerate(frames):
        k.put(f, pkttype=4 if i == 3 else 1, status=TP_STATUS_USER | (TP_STATUS_CSUMNOTREADY if i == 5 else 0))
        rx = r.recv()
        got.append(rx.frame)
        assert rx.outgoing == (i == 3)
        assert rx.csum_not_ready == (i == 5)
        assert all(k.status(s) == 0 for s in range(k.n))  # every slot back with the kernel
    assert got == frames
    assert isinstance(got[0], bytes)


def test_a_batch_is_read_without_waiting_and_an_empty_ring_times_out():
    k = KernelSide(8)
    r = k.ring()
    for i in range(5):
        k.put(discover_frame(bench_mac(i), i + 1))
    assert [r.recv().frame[6:12] for _ in range(5)] == [bench_mac(i) for i in range(5)]
    assert k.waits == 0  # frames already in the ring cost no poll()
    with pytest.raises(TimeoutError):
        r.recv()


@pytest.mark.parametrize("lie", [
    dict(mac=0),                 # MAC header on top of the slot's own header
    dict(mac=2040, snaplen=300),  # runs past the slot
    dict(snaplen=10_000),        # longer than a slot
    dict(mac=65535, snaplen=65535),
])
def test_a_header_that_points_outside_its_slot_gives_an_empty_frame_and_the_ring_goes_on(lie):
    k = KernelSide(4)
    r = k.ring()
    k.put(discover_frame(bench_mac(1), 1), **lie)
    assert r.recv().frame == b""
    assert k.status(0) == 0
    good = discover_frame(bench_mac(2), 2)
    k.put(good)
    assert r.recv().frame == good


def test_a_truncated_frame_is_delivered_short_and_the_watcher_counts_it_malformed():
    k = KernelSide(4)
    r = k.ring()
    m = PxeMetrics()
    answered = []
    w = Watcher(r, m, None, answered.append)
    f = discover_frame(bench_mac(3), 3)
    k.put(f, snaplen=200, length=len(f))  # what the kernel does with a frame longer than the slot
    k.put(f)
    w.handle(r.recv(), time.perf_counter())
    assert w.malformed == 1 and not answered
    w.handle(r.recv(), time.perf_counter())
    assert len(answered) == 1


def test_random_garbage_in_every_header_field_never_raises_anything_but_timeout():
    rnd = random.Random(7)
    k = KernelSide(16)
    r = k.ring()
    m = PxeMetrics()
    w = Watcher(r, m, None, lambda seen: None)
    for i in range(2000):
        off = k.head * FRAME
        k.buf[off:off + FRAME] = rnd.randbytes(FRAME)
        struct.pack_into("I", k.buf, off, TP_STATUS_USER | rnd.getrandbits(31) << 1)
        k.head = (k.head + 1) % k.n
        w.handle(r.recv(), time.perf_counter())
        assert k.status((k.head - 1) % k.n) == 0
    assert w.seen + w.malformed == 2000


def test_a_reader_out_of_step_with_the_kernel_finds_the_ready_frame():
    k = KernelSide(8)
    r = k.ring()
    k.head = 5  # the kernel writes at slot 5 while the reader looks at slot 0
    f = discover_frame(bench_mac(9), 9)
    k.put(f)
    assert r.recv().frame == f and r.resyncs == 1
    k.put(f)
    assert r.recv().frame == f and r.resyncs == 1  # in step again
