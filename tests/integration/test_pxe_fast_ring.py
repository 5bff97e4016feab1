"""PacketSocket's receive ring (TPACKET_V2 + mmap) against the real kernel, on a veth pair in a namespace of
its own: frames arrive whole and in order with their packet type, the BPF filter still applies, a
frame longer than a ring slot arrives truncated and is counted malformed by the watcher (which goes on
answering), and a ring overrun drops frames (PACKET_STATISTICS) without putting the reader out of step.

Peers: root, `ip` (iproute2). A few seconds.
"""
from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time
import uuid

import pytest

from metalcore.lab.pxe_client import bench_mac, discover_frame
from metalcore.net.netns import in_netns
from metalcore.protocol import frames
from metalcore.pxe.metrics import PxeMetrics
from metalcore.pxe.rawsock import RING_BLOCK_SIZE, RING_BLOCKS, RING_FRAME_SIZE, PacketSocket
from metalcore.pxe.watch import Watcher

pytestmark = pytest.mark.timeout(120)
RING_SLOTS = RING_BLOCK_SIZE // RING_FRAME_SIZE * RING_BLOCKS


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def veth():
    """Namespace with veth pair a (the watcher's side) <-> b (the sender's side), MTU 9000."""
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces, AF_PACKET): run the integration tests as root")
    if shutil.which("ip") is None:
        pytest.fail("needs iproute2: apt-get install iproute2")
    tag = uuid.uuid4().hex[:6]
    ns, a, b = f"mc-ring-{tag}", f"ra{tag}", f"rb{tag}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "add", a, "mtu", "9000", "type", "veth", "peer", "name", b, "mtu", "9000")
        for dev in (a, b):
            _ip("-n", ns, "link", "set", dev, "up")
        with in_netns(ns):
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        tx.bind((b, 0))
        yield ns, a, tx
        tx.close()
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def recv_all(ps: PacketSocket, timeout: float = 0.3) -> list:
    ps.settimeout(timeout)
    out = []
    while True:
        try:
            out.append(ps.recv())
        except TimeoutError:
            return out


def udp_frame(dst_port: int, payload: bytes, src_mac: bytes = bench_mac(5), src_port: int = 68) -> bytes:
    from ipaddress import IPv4Address
    return frames.encode_udp_frame(src_mac=src_mac, dst_mac=frames.BROADCAST_MAC, src_ip=IPv4Address(0),
                                   dst_ip=IPv4Address("255.255.255.255"), src_port=src_port, dst_port=dst_port,
                                   payload=payload)


@pytest.mark.parametrize("ring", [True, False], ids=["ring", "recvmsg"])
def test_frames_arrive_whole_in_order_and_the_filter_still_applies(veth, ring):
    ns, a, tx = veth
    ps = PacketSocket(a, ns, ring=ring)
    try:
        assert (ps.ring is not None) == ring
        sent = [discover_frame(bench_mac(i), i + 1) for i in range(300)]
        for i, f in enumerate(sent):
            tx.send(f)
            if i % 50 == 0:
                tx.send(udp_frame(53, b"not dhcp" * 10, src_port=5353))  # filtered by BPF: never reaches the ring
        got = recv_all(ps)
        assert [rx.frame for rx in got] == sent
        assert {rx.pkttype for rx in got} == {socket.PACKET_BROADCAST}
        # the sender's own side sees its frames as outgoing
        out = PacketSocket("rb" + a[2:], ns, ring=ring)
        try:
            tx.send(sent[0])
            rx = recv_all(out)
            assert len(rx) == 1 and rx[0].outgoing and rx[0].frame == sent[0]
        finally:
            out.close()
    finally:
        ps.close()


def test_a_frame_longer_than_a_slot_arrives_truncated_and_the_watcher_goes_on(veth):
    ns, a, tx = veth
    ps = PacketSocket(a, ns)
    answered = []
    w = Watcher(ps, PxeMetrics(), None, answered.append)
    try:
        good = discover_frame(bench_mac(1), 1)
        big = udp_frame(67, good[42:] + bytes(4000))  # a DHCP packet with 4 KB of padding: fits the MTU only
        tx.send(big)
        tx.send(good)
        got = recv_all(ps)
        assert len(got) == 2
        assert len(got[0].frame) < len(big) <= 9000 and len(got[0].frame) <= RING_FRAME_SIZE
        for rx in got:
            w.handle(rx, time.perf_counter())
        assert w.malformed == 1 and len(answered) == 1
        assert answered[0].packet.mac == "02:be:00:00:00:01"
    finally:
        ps.close()


def test_an_overrun_ring_drops_and_counts_and_the_reader_stays_in_step(veth):
    ns, a, tx = veth
    ps = PacketSocket(a, ns)
    try:
        n = RING_SLOTS + 1000
        template = bytearray(discover_frame(bench_mac(2), 0))
        for i in range(n):
            struct.pack_into("!I", template, 46, i + 1)
            tx.send(template)
        got = recv_all(ps)
        xids = [struct.unpack_from("!I", rx.frame, 46)[0] for rx in got]
        assert len(got) == RING_SLOTS and xids == list(range(1, RING_SLOTS + 1))
        packets, drops = ps.stats()
        assert drops >= 1000 and packets >= n
        # the kernel and the reader agree on the next slot: new frames come through in order
        for i in range(10):
            struct.pack_into("!I", template, 46, 0x100000 + i)
            tx.send(template)
        got = recv_all(ps)
        assert [struct.unpack_from("!I", rx.frame, 46)[0] for rx in got] == [0x100000 + i for i in range(10)]
        assert ps.ring.resyncs == 0
    finally:
        ps.close()


def test_fanout_hash_joins_but_puts_every_discover_into_one_member(veth):
    """Why the stage does not spread DHCP over PACKET_FANOUT_HASH workers: every DISCOVER has the same
    flow (0.0.0.0:68 -> 255.255.255.255:67), so the flow hash sends all of them to one member."""
    ns, a, tx = veth
    members = [PacketSocket(a, ns, fanout_group=0x4D43) for _ in range(2)]
    try:
        for i in range(200):
            tx.send(discover_frame(bench_mac(i), i + 1))
        counts = sorted(len(recv_all(m, 0.2)) for m in members)
        assert counts == [0, 200]
    finally:
        for m in members:
            m.close()
