"""Metal API client: signing, retries, breaker and error mapping against httpx.MockTransport (no network)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from metalcore.clients.metal_api import MetalAPIClient, build_base_url
from metalcore.clients.resilience import BreakerState, CircuitBreaker, RetryPolicy
from metalcore.errors import CircuitOpen, MetalAPIError, MetalAPIUnavailable
from metalcore.protocol.hmac import HMACVerifier

T0 = datetime(2020, 7, 13, 12, 0, 0, tzinfo=timezone.utc)
KEY = "edit-key-never-logged"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


def make_client(handler, *, retry=None, breaker=None, clock=None, base="http://api.test:8080/metal"):
    clock = clock or FakeClock()
    return MetalAPIClient(
        base, KEY, transport=httpx.MockTransport(handler), retry=retry or RetryPolicy(max_attempts=3),
        breaker=breaker or CircuitBreaker(failure_threshold=5, reset_timeout=10),
        clock=lambda: T0, monotonic=clock.monotonic, sleep=clock.sleep, rng=random.Random(1)), clock


def test_build_base_url():
    assert build_base_url("http", "10.0.0.1", 8080, "") == "http://10.0.0.1:8080"
    assert build_base_url("https", "api", 443, "/") == "https://api:443"
    assert build_base_url("http", "api", 80, "metal/") == "http://api:80/metal"
    assert build_base_url("http", "fd00::1", 8080, "/metal") == "http://[fd00::1]:8080/metal"
    with pytest.raises(ValueError):
        build_base_url("ftp", "x", 1, "")


def test_requests_are_signed_and_paths_joined_under_basepath():
    seen = []

    def handler(req: httpx.Request):
        seen.append(req)
        return httpx.Response(200, json=[{"id": "m1"}])

    client, _ = make_client(handler)
    assert client.find_machines_by_mac("aa:bb:cc:dd:ee:ff") == [{"id": "m1"}]
    req = seen[0]
    assert req.url.path == "/metal/v1/machine/find"
    assert req.method == "POST"
    assert req.read() == b'{"nics_mac_addresses":["aa:bb:cc:dd:ee:ff"]}'
    assert req.headers["X-Date"] == "2020-07-13T12:00:00Z"
    assert len(req.headers["X-Data-Salt"]) == 24
    assert req.headers["Authorization"].startswith("Metal-Edit ")
    # the server side of the same algorithm accepts it
    assert HMACVerifier("Metal-Edit", KEY).verify(
        "POST", req.headers["Authorization"], req.headers["X-Date"], req.headers["X-Data-Salt"],
        T0 + timedelta(seconds=1)) == "Metal-Edit"
    assert KEY not in repr(client) and KEY not in repr(client._http.auth)


def test_get_retries_5xx_then_succeeds_with_jittered_backoff():
    answers = iter([httpx.Response(502), httpx.Response(503), httpx.Response(200, json={"id": "m1"})])
    salts = []

    def handler(req):
        salts.append(req.headers["X-Data-Salt"])
        return next(answers)

    client, clock = make_client(handler)
    assert client.get_machine("m1") == {"id": "m1"}
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 0.2 and 0 <= clock.sleeps[1] <= 0.4
    assert len(set(salts)) == 3  # each try is signed anew


def test_get_retries_connection_errors_then_raises_unavailable():
    calls = []

    def handler(req):
        calls.append(1)
        raise httpx.ConnectError("refused", request=req)

    client, clock = make_client(handler)
    with pytest.raises(MetalAPIUnavailable) as ei:
        client.get_switch("leaf01")
    assert not isinstance(ei.value, MetalAPIError)
    assert len(calls) == 3 and len(clock.sleeps) == 2
    assert ei.value.http_status_hint == 503


def test_timeout_is_unavailable():
    def handler(req):
        raise httpx.ReadTimeout("slow", request=req)

    client, _ = make_client(handler, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(MetalAPIUnavailable, match="timed out"):
        client.get_partition("p1")


def test_non_idempotent_post_is_not_retried():
    calls = []

    def handler(req):
        calls.append(1)
        return httpx.Response(500, json={"statuscode": 500, "message": "boom"})

    client, clock = make_client(handler)
    with pytest.raises(MetalAPIError) as ei:
        client.finalize_allocation("m1", {"console_password": "x"})
    assert ei.value.status == 500 and ei.value.message == "boom"
    assert len(calls) == 1 and clock.sleeps == []


def test_4xx_is_not_retried_and_carries_status_and_message():
    calls = []

    def handler(req):
        calls.append(1)
        return httpx.Response(404, json={"statuscode": 404, "message": "machine m9 not found"})

    client, _ = make_client(handler)
    with pytest.raises(MetalAPIError) as ei:
        client.get_machine("m9")
    assert (ei.value.status, ei.value.message) == (404, "machine m9 not found")
    assert len(calls) == 1
    assert client.breaker.consecutive_failures == 0  # a 404 proves the server is alive


def test_register_returns_status():
    def handler(req):
        return httpx.Response(201, json={"id": "m1"})

    client, _ = make_client(handler)
    assert client.register_machine({"uuid": "m1"}) == (201, {"id": "m1"})


def test_wait_504_is_none_and_no_failure_and_timeout_is_per_call():
    seen = []

    def handler(req):
        seen.append(req.extensions["timeout"])
        return httpx.Response(504, json={"statuscode": 504, "message": "server timeout"})

    client, clock = make_client(handler)
    assert client.wait_for_allocation("m1", timeout=45) is None
    assert seen[0]["read"] == 45
    assert clock.sleeps == [] and client.breaker.consecutive_failures == 0
    client.get_partition  # default timeout untouched
    assert client._http.timeout.read == 15.0


def test_wait_returns_machine():
    def handler(req):
        assert req.url.raw_path.endswith(b"/v1/machine/m%201/wait")  # ids are quoted
        return httpx.Response(200, json={"id": "m 1", "allocation": {"name": "x"}})

    client, _ = make_client(handler)
    assert client.wait_for_allocation("m 1")["allocation"] == {"name": "x"}


def test_non_json_answer_is_an_error():
    client, _ = make_client(lambda req: httpx.Response(200, text="<html>"))
    with pytest.raises(MetalAPIError, match="not JSON"):
        client.get_machine("m1")


def test_circuit_opens_after_threshold_and_half_opens_after_cooldown():
    state = {"fail": True, "calls": 0}

    def handler(req):
        state["calls"] += 1
        if state["fail"]:
            raise httpx.ConnectError("refused", request=req)
        return httpx.Response(200, json={"id": "p1"})

    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=10)
    client, clock = make_client(handler, retry=RetryPolicy(max_attempts=1), breaker=breaker)
    for _ in range(3):
        with pytest.raises(MetalAPIUnavailable):
            client.get_partition("p1")
    assert breaker.state(clock.t) is BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        client.get_partition("p1")
    assert state["calls"] == 3  # the open breaker did not call
    clock.t += 10
    assert breaker.state(clock.t) is BreakerState.HALF_OPEN
    # the half-open trial fails: open again at once
    with pytest.raises(MetalAPIUnavailable):
        client.get_partition("p1")
    assert breaker.state(clock.t) is BreakerState.OPEN
    clock.t += 10
    state["fail"] = False
    assert client.get_partition("p1") == {"id": "p1"}
    assert breaker.state(clock.t) is BreakerState.CLOSED


def test_breaker_half_open_allows_one_trial_at_a_time():
    b = CircuitBreaker(failure_threshold=1, reset_timeout=5)
    b.record_failure(0.0)
    assert not b.allow(1.0)
    assert b.retry_after(1.0) == pytest.approx(4.0)
    assert b.allow(5.0) and not b.allow(5.0)
    b.record_success()
    assert b.allow(5.0) and b.allow(5.0)


def test_retry_policy_bounds():
    p = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=1.0)
    rng = random.Random(0)
    assert p.should_retry(0) and p.should_retry(1) and not p.should_retry(2)
    for attempt in range(6):
        assert 0 <= p.delay(attempt, rng) <= min(1.0, 0.5 * 2 ** attempt)


def test_retries_stop_when_breaker_opens_mid_call():
    def handler(req):
        return httpx.Response(503)

    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=60)
    client, _ = make_client(handler, retry=RetryPolicy(max_attempts=5), breaker=breaker)
    with pytest.raises(CircuitOpen):
        client.get_machine("m1")
