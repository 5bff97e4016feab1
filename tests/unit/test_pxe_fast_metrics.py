"""What the packet loop's fast path no longer does per packet, and that nothing is lost by it:
tallies instead of Prometheus children (flushed periodically and on every scrape), the bus-event token
bucket with small publisher batches, and the boot tracker told once a second per MAC."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from prometheus_client import REGISTRY, Counter, Histogram, generate_latest

from metalcore.lab.pxe_client import bench_mac, discover_frame
from metalcore.pxe import watch
from metalcore.pxe.metrics import OFFER_BUCKETS, PxeMetrics, Tally, TallyHistogram, flush_tallies
from metalcore.pxe.rawsock import Received
from metalcore.pxe.watch import EventQueue

sys.path.insert(0, str(Path(__file__).parent / "pxe"))
from test_responder import make, wait_for  # noqa: E402  (the responder tests' fakes)


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_tally_histogram_exposes_what_direct_observations_would():
    direct = Histogram("t_fast_direct_seconds", "d", buckets=OFFER_BUCKETS)
    tallied = Histogram("t_fast_tallied_seconds", "d", buckets=OFFER_BUCKETS)
    t = TallyHistogram(tallied)
    assert not t.direct  # prometheus_client still has the private fields this relies on
    values = [0.00005, 0.0001, 0.0001000001, 0.003, 0.7, 20.0, 0.0] + [0.0002] * 50
    for v in values:
        direct.observe(v)
        t.observe(v)
    t.flush()
    t.flush()  # idempotent
    for v in values[:3]:
        direct.observe(v)
        t.observe(v)
    t.flush()

    def exposition(name):
        return [ln.split(" ")[1] for ln in generate_latest(REGISTRY).decode().splitlines()
                if ln.startswith(name) and "_created" not in ln]

    assert exposition("t_fast_tallied_seconds") == exposition("t_fast_direct_seconds")


def test_tally_counts_reach_prometheus_on_scrape_without_an_explicit_flush():
    PxeMetrics()  # registers the flush hook (first in line at every scrape)
    c = Counter("t_fast_tally_total", "d", ("k",))
    t = Tally(c.labels("a"))
    from metalcore.pxe import metrics as pm
    pm._TALLIES.add(t)
    for _ in range(1234):
        t.inc()
    text = generate_latest(REGISTRY).decode()
    assert 't_fast_tally_total{k="a"} 1234.0' in text
    flush_tallies()
    assert sample("t_fast_tally_total", k="a") == 1234


def test_watcher_packet_counts_and_fast_path_offers_are_exact_after_a_flush():
    r, w, sock, *_ = make()
    m = r.metrics
    mac = bench_mac(77)
    flush_tallies()
    p0 = sample("metalcore_pxe_dhcp_packets_total", direction="in", type="DISCOVER", arch="0")
    o0 = sample("metalcore_pxe_proxy_replies_total", kind="offer", arch="0")
    c0 = sample("metalcore_pxe_offer_latency_seconds_count", cached="yes")
    w.handle(Received(discover_frame(mac, 1), 1, False), time.perf_counter())
    assert wait_for(lambda: sock.sent)
    for xid in range(2, 502):
        w.handle(Received(discover_frame(mac, xid), 1, False), time.perf_counter())
    assert r.fast_hits == 500
    m.flush()
    assert sample("metalcore_pxe_dhcp_packets_total", direction="in", type="DISCOVER", arch="0") - p0 == 501
    assert sample("metalcore_pxe_proxy_replies_total", kind="offer", arch="0") - o0 == 501
    assert sample("metalcore_pxe_offer_latency_seconds_count", cached="yes") - c0 == 500  # first: asked


def test_tracker_hears_of_cached_answers_once_a_second_per_mac():
    r, w, sock, decider, api, gate, tracker = make()
    now = [1000.0]
    tracker.clock = r._clock = lambda: now[0]
    calls = []
    real = tracker.answered
    tracker.answered = lambda info, d, xid=None: calls.append(xid) or real(info, d, xid)
    mac = bench_mac(78)
    w.handle(Received(discover_frame(mac, 1), 1, False), time.perf_counter())
    assert wait_for(lambda: sock.sent)
    for xid in range(2, 100):
        w.handle(Received(discover_frame(mac, xid), 1, False), time.perf_counter())
    assert calls == [None, 2]  # the asked answer, then the first cached one
    now[0] += 1.01
    w.handle(Received(discover_frame(mac, 100), 1, False), time.perf_counter())
    assert calls == [None, 2, 100]
    assert tracker.attempts == 1  # a retry storm stays one boot attempt
    now[0] += 600  # a reboot much later: a new attempt
    w.handle(Received(discover_frame(mac, 101), 1, False), time.perf_counter())
    assert tracker.attempts == 2


def test_event_bucket_passes_a_burst_then_the_sustained_rate_and_counts_the_rest():
    published = []
    m = PxeMetrics()
    q = EventQueue(lambda rx, at: published.append(rx), m, rate=100.0, burst=50.0)
    d0 = sample("metalcore_pxe_bus_events_dropped_total")
    for i in range(200):
        q.put(i, 0.0)
    assert len(q._q) in (50, 51) and q.dropped in (149, 150)
    time.sleep(0.2)  # ~20 more tokens
    for i in range(200):
        q.put(i, 0.0)
    assert 15 <= len(q._q) - 50 <= 25
    queued = len(q._q)
    q.start()
    q.stop()  # publishes what is queued
    assert len(published) == queued and not q._q
    assert sample("metalcore_pxe_bus_events_dropped_total") - d0 == q.dropped


def test_publisher_takes_small_batches_so_it_never_holds_the_loop_up_for_long():
    sizes = []
    batch = []
    lock = threading.Lock()

    def publish(rx, at):
        with lock:
            batch.append(rx)

    q = EventQueue(publish, PxeMetrics(), rate=1e6, burst=1e6)
    for i in range(watch.PUBLISH_BATCH * 10):
        q.put(i, 0.0)
    q.start()
    for _ in range(200):
        time.sleep(watch.PUBLISH_POLL / 2)
        with lock:
            if batch:
                sizes.append(len(batch))
                batch.clear()
        if sum(sizes) == watch.PUBLISH_BATCH * 10:
            break
    q.stop()
    assert sum(sizes) == watch.PUBLISH_BATCH * 10
    assert max(sizes) <= 2 * watch.PUBLISH_BATCH  # at most two wake-ups between two of our looks
