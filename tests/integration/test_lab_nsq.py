"""nsqd + nsqlookupd from the lab: pynsq publish/consume through nsqlookupd, restart."""
from __future__ import annotations

import asyncio
import json
import urllib.request

import nsq

from metalcore.lab.nsq import http_get


def _lookup_has_topic(peer, topic: str) -> bool:
    raw = http_get(peer.host, peer.lookupd_http_port, f"/lookup?topic={topic}")
    return bool(raw) and bool(json.loads(raw).get("producers"))


async def _wait(pred, timeout: float, what: str):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _pub_then_consume(peer, topic: str, bodies: list[bytes]) -> list[bytes]:
    writer = nsq.Writer([peer.nsqd_tcp_address])
    await _wait(lambda: writer.conns, 5, "writer connection")
    for b in bodies:
        fut = asyncio.get_running_loop().create_future()
        writer.pub(topic, b, callback=lambda conn, data, f=fut: f.set_result(data))
        res = await asyncio.wait_for(fut, 5)
        assert not isinstance(res, Exception), res
    # The topic reaches nsqlookupd asynchronously; the Reader asks lookupd once at start.
    await _wait(lambda: _lookup_has_topic(peer, topic), 5, "topic in nsqlookupd")
    got: list[bytes] = []

    def handler(msg):
        got.append(bytes(msg.body))
        return True

    reader = nsq.Reader(message_handler=handler, lookupd_http_addresses=[f"http://{peer.lookupd_http_address}"],
                        topic=topic, channel="test", lookupd_poll_interval=1, lookupd_poll_jitter=0.0,
                        max_in_flight=10)
    try:
        await _wait(lambda: len(got) >= len(bodies), 10, "messages at the reader")
    finally:
        reader.close()
        writer.close() if hasattr(writer, "close") else None
    return got


def test_nsqd_registered_with_lookupd(nsq_peer):
    assert nsq_peer.registered()
    assert http_get(nsq_peer.host, nsq_peer.nsqd_http_port, "/ping") == b"OK"


def test_publish_consume_through_lookupd(nsq_peer):
    bodies = [f"msg-{i}".encode() for i in range(5)]
    got = asyncio.run(asyncio.wait_for(_pub_then_consume(nsq_peer, "lab_test", bodies), 20))
    assert sorted(got) == sorted(bodies)


def test_restart_keeps_ports_and_registers_again(nsq_peer):
    ports = (nsq_peer.nsqd_tcp_port, nsq_peer.nsqd_http_port)
    old_pid = nsq_peer.procs["nsqd"].pid
    nsq_peer.restart()
    assert (nsq_peer.nsqd_tcp_port, nsq_peer.nsqd_http_port) == ports
    assert nsq_peer.procs["nsqd"].pid != old_pid
    assert nsq_peer.registered()
    req = urllib.request.Request(f"http://{nsq_peer.nsqd_http_address}/pub?topic=after_restart", data=b"x")
    with urllib.request.urlopen(req, timeout=2) as r:
        assert r.read() == b"OK"
