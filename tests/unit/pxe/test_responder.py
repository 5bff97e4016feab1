"""Responder, DecisionGate and BootTracker with fakes for the socket, the decider and the Metal API."""
from __future__ import annotations

import threading
import time
import uuid
from ipaddress import IPv4Address


from metalcore.boot import BootResponse, Decision, Verdict
from metalcore.protocol import dhcp, frames
from metalcore.protocol.dhcp import MessageType, Option
from metalcore.pxe.decisions import BootTracker, DecisionGate
from metalcore.pxe.metrics import PxeMetrics
from metalcore.pxe.rawsock import Received
from metalcore.pxe.responder import Responder
from metalcore.pxe.service import proxy_settings
from metalcore.pxe.watch import EventQueue, Watcher, decode_frame
from metalcore.lab.pxe_client import discover_frame

BOOT = BootResponse("http://img/k", ("http://img/i",), "console=ttyS0 METAL_CORE_ADDRESS=10.0.0.1:4242")
SERVER_MAC = b"\x02\x00\x00\x00\x00\x01"


class FakeSock:
    mac = SERVER_MAC

    def __init__(self):
        self.sent: list[bytes] = []

    def send(self, frame: bytes) -> int:
        self.sent.append(frame)
        return len(frame)


class FakeDecider:
    def __init__(self, verdicts: dict[str, Verdict]):
        self.verdicts = verdicts
        self.calls: list[str] = []

    def explain(self, mac: str) -> Decision:
        self.calls.append(mac)
        v = self.verdicts.get(mac, Verdict.DISCOVERY)
        return Decision(v, "test", BOOT if v is Verdict.DISCOVERY else None, "m-" + mac)

    def invalidate(self, mac=None):
        pass


class FakeApi:
    def __init__(self):
        self.events: list[tuple[str, dict]] = []

    def add_provisioning_event(self, mid, ev):
        self.events.append((mid, ev))
        return {}


class Settings:
    cidr = type("C", (), {"ip": IPv4Address("10.0.0.1")})()
    pxe_http_port = 4280
    efi_boot_file = "ipxe.efi"


def make(verdicts=None, ttl=5.0):
    m = PxeMetrics()
    sock, decider, api = FakeSock(), FakeDecider(verdicts or {}), FakeApi()
    gate = DecisionGate(decider, ttl, m)
    tracker = BootTracker(api, None, m)
    r = Responder(proxy_settings(Settings()), sock, gate, tracker, m)
    w = Watcher(sock, m, None, r.on_request, is_ours=r.is_ours, fast=r.fast_answer)
    return r, w, sock, decider, api, gate, tracker


def wait_for(pred, t=2.0):
    end = time.monotonic() + t
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return False


def feed(w, frame):
    w.handle(Received(frame, 1, False), time.perf_counter())


def test_offer_is_a_built_broadcast_frame_without_a_lease():
    r, w, sock, decider, api, gate, tracker = make()
    mac = b"\x52\x54\x00\x00\x00\x07"
    feed(w, discover_frame(mac, 0x1234))
    assert wait_for(lambda: sock.sent)
    f = frames.decode_udp_frame(sock.sent[0])
    assert f.eth.dst == b"\xff" * 6 and f.eth.src == SERVER_MAC
    assert (str(f.ip.src), f.udp.src_port, str(f.ip.dst), f.udp.dst_port) == ("10.0.0.1", 67, "255.255.255.255", 68)
    p = dhcp.decode(f.payload)
    assert p.xid == 0x1234 and int(p.yiaddr) == 0 and p.message_type() == MessageType.OFFER
    assert p.file_name == "http://10.0.0.1:4280/ipxe/52:54:00:00:00:07"
    assert p.options[Option.VENDOR_CLASS] == b"PXEClient"
    # the second DISCOVER is answered from the gate's memory: one Metal API question per MAC
    feed(w, discover_frame(mac, 0x1235))
    assert len(sock.sent) == 2 and decider.calls == [mac.hex(":")]


def test_allocated_machine_and_unknown_arch_get_no_answer():
    alloc = "52:54:00:00:00:08"
    r, w, sock, decider, *_ = make({alloc: Verdict.DISK})
    feed(w, discover_frame(bytes.fromhex(alloc.replace(":", "")), 1))
    assert wait_for(lambda: decider.calls)
    time.sleep(0.05)
    feed(w, discover_frame(b"\x52\x54\x00\x00\x00\x09", 2, arch=0x4242, ipxe=False))
    time.sleep(0.05)
    assert sock.sent == []
    assert decider.calls == [alloc]  # unknown arch is refused before the Metal API is asked


def test_non_pxe_and_replies_are_left_alone():
    r, w, sock, decider, *_ = make()
    plain = discover_frame(b"\x52\x54\x00\x00\x00\x0a", 3, vendor_class=b"udhcp 1.35")
    feed(w, plain)
    reply = bytearray(discover_frame(b"\x52\x54\x00\x00\x00\x0b", 4))
    reply[42] = 2
    feed(w, frames.encode_udp_frame(src_mac=b"\x02" * 6, dst_mac=b"\xff" * 6, src_ip=IPv4Address(0),
                                    dst_ip=IPv4Address("255.255.255.255"), src_port=68, dst_port=67,
                                    payload=bytes(reply[42:])))
    time.sleep(0.05)
    assert sock.sent == [] and decider.calls == []


def test_malformed_frames_are_counted_not_raised():
    r, w, *_ = make()
    good = discover_frame(b"\x52\x54\x00\x00\x00\x0c", 5)
    for junk in (b"", b"\x00" * 13, good[:50], good[:-200], bytes(len(good))):
        feed(w, junk)
    assert w.malformed == 5


def test_checksum_not_ready_frames_are_not_verified():
    good = bytearray(discover_frame(b"\x52\x54\x00\x00\x00\x0d", 6))
    good[40:42] = b"\x12\x34"  # what TX offload leaves: a not-yet-computed checksum
    seen = decode_frame(Received(bytes(good), 1, True), 0.0)
    assert seen.packet.xid == 6


def test_boot_tracker_counts_attempts_not_packets():
    m = PxeMetrics()
    api = FakeApi()
    now = [1000.0]
    t = BootTracker(api, None, m, clock=lambda: now[0])
    from metalcore.protocol.pxe import ClientInfo
    guid = uuid.uuid4()

    def info(xid, ipxe=False):
        return ClientInfo("aa:bb:cc:dd:ee:ff", xid, 1, 0, (0,), "PXEClient", (b"iPXE",) if ipxe else (),
                          guid, None, ipxe, False)
    d = Decision(Verdict.DISCOVERY, "x", BOOT, None)
    assert t.answered(info(1), d)
    assert not t.answered(info(1), d)          # retransmission
    now[0] += 10
    assert not t.answered(info(2, ipxe=True), d)  # the iPXE the ROM chain-loaded
    now[0] += 100
    assert t.answered(info(3, ipxe=True), d)   # a new boot
    t.close()
    assert [e[0] for e in api.events] == [str(guid), str(guid)]
    assert api.events[0][1]["event"] == "PXE Booting"


def test_event_queue_drops_instead_of_blocking():
    m = PxeMetrics()
    block = threading.Event()
    q = EventQueue(lambda rx, at: block.wait(), m, maxlen=3).start()
    for _ in range(10):
        q.put(object(), 0.0)
    assert q.dropped >= 6
    block.set()
    q.stop()


def test_repeats_are_answered_from_the_reply_cache_with_the_new_xid():
    r, w, sock, decider, *_ = make()
    mac = b"\x52\x54\x00\x00\x00\x0e"
    feed(w, discover_frame(mac, 0x1111))
    assert wait_for(lambda: sock.sent)
    feed(w, discover_frame(mac, 0xDEADBEEF))
    assert r.fast_hits == 1 and len(sock.sent) == 2
    slow = frames.decode_udp_frame(sock.sent[0])
    fast = frames.decode_udp_frame(sock.sent[1])  # verifies the patched UDP checksum
    assert fast.udp.checksum_state == frames.ChecksumState.VALID
    a, b = dhcp.decode(slow.payload), dhcp.decode(fast.payload)
    assert b.xid == 0xDEADBEEF and a.xid == 0x1111
    b.xid = a.xid
    assert a == b
    # a different client (another MAC) is not a repeat
    feed(w, discover_frame(b"\x52\x54\x00\x00\x00\x0f", 0xDEADBEEF))
    assert r.fast_hits == 1
