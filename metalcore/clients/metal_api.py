"""The Metal API client every stage uses: one keep-alive connection pool, HMAC-signed, retried, breaker-guarded.

Calls and what metal-core used them for are in research note §2 (metal-api swagger @56e4775d).
Rules of this file:

* Every request is signed as ``Metal-Edit`` (metal-core never used another user, §2.1) with the pure
  :class:`~metalcore.protocol.hmac.HMACSigner`; each retry is signed anew (fresh X-Date and salt), so
  a retry after a long backoff is not rejected as too old. The salt comes from a ``random.Random``
  seeded from os.urandom: it must be unique, not secret (it is sent in clear beside the MAC).
* Transport: a small pool of http.client keep-alive connections (clients/pooled_http.py), ≈ 8× less
  Python per call than httpx, which the hammer proxy pays on every forwarded request. When a
  ``transport`` (an httpx transport, e.g. ``httpx.MockTransport`` in tests) is passed, httpx with
  :class:`HMACAuth` is used instead; both paths share the one request loop below.
* Only idempotent calls are retried: GETs, and the POSTs declared ``idempotent=True`` below (find is a
  query). A retry happens on connection errors, timeouts and 5xx answers, with jittered exponential
  backoff (:class:`RetryPolicy`). register/event/finalize are not retried here: a second register
  turns a 201 into a 200 and a second event is a second log line; their callers decide.
* One :class:`CircuitBreaker` per client: connection errors, timeouts and 5xx count as failures,
  any other answer (even a 404) as success. While open, calls fail at once with ``CircuitOpen``.
* Errors: ``MetalAPIError(status, message)`` when metal-api answered something unexpected,
  ``MetalAPIUnavailable`` when it did not answer. The key never reaches a log line or an error text.
* The wait long-poll has its own timeout, longer than metal-api's 30 s server timeout, and a 504
  ("server timeout") is the normal "not allocated yet" answer: it returns None and is no failure.
"""

from __future__ import annotations

import json
import os
import random
import time
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import quote

import httpx
from loguru import logger

from metalcore.clients.pooled_http import Answer, ConnectionPool, Timeout, TransportFailure
from metalcore.clients.resilience import CircuitBreaker, RetryPolicy
from metalcore.errors import CircuitOpen, MetalAPIError, MetalAPIUnavailable
from metalcore.protocol.hmac import HMACSigner, HMACUser, make_salt

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_WAIT_TIMEOUT",
    "HMACAuth",
    "MetalAPIClient",
    "SERVER_WAIT_TIMEOUT",
    "build_base_url",
]

DEFAULT_TIMEOUT = 15.0  # metal-core's newer METAL_CORE_TIMEOUT default (cmd/config.go@eb8219c)
SERVER_WAIT_TIMEOUT = 30.0  # metal-api waitForServerTimeout (machine-service.go@56e4775d)
# The client must outlive the server's 30 s so that the server's 504 (a clean "not yet") arrives
# instead of a client-side timeout; 10 s of slack for a loaded 2-core box. metal-hammer used 5 min.
DEFAULT_WAIT_TIMEOUT = SERVER_WAIT_TIMEOUT + 10.0


def build_base_url(protocol: str = "http", ip: str = "localhost", port: int = 8080, basepath: str = "") -> str:
    """``<protocol>://<ip>:<port><basepath>`` as metal-core built it from METAL_CORE_METAL_API_* (§7).

    An IPv6 literal gets brackets; basepath "" and "/" both mean the root; no trailing slash.
    """
    if protocol not in ("http", "https"):
        raise ValueError(f"metal-api protocol must be http or https, got {protocol!r}")
    host = f"[{ip}]" if ":" in ip and not ip.startswith("[") else ip
    base = (basepath or "").strip()
    base = "/" + base.strip("/") if base.strip("/") else ""
    return f"{protocol}://{host}:{int(port)}{base}"


class HMACAuth(httpx.Auth):
    """httpx auth flow that adds Authorization/X-Date/X-Data-Salt to every request (sans-IO signer)."""

    def __init__(self, signer: HMACSigner, clock: Callable[[], datetime], rng: Any) -> None:
        self.signer = signer
        self.clock = clock
        self.rng = rng

    def __repr__(self) -> str:
        return f"HMACAuth({self.signer!r})"

    def auth_flow(self, request: httpx.Request):
        headers = self.signer.headers(request.method, self.clock(), make_salt(self.rng))
        request.headers.update(headers)
        yield request


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _message_of(resp: Answer) -> str:
    """metal-api errors are {"statuscode", "message"}; fall back to a short piece of the text."""
    try:
        body = json.loads(resp.content)
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return body["message"]
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        pass
    return resp.text[:200]


def _encode(body: Any) -> bytes:
    """JSON as httpx's ``json=`` wrote it: compact, UTF-8, no NaN."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


_JSON_HEADERS = {"Content-Type": "application/json"}


class MetalAPIClient:
    """Synchronous Metal API client. Thread-safe; one instance per stage; ``close()`` when done."""

    def __init__(
        self,
        base_url: str,
        hmac_key: str | bytes,
        *,
        auth_type: str | HMACUser = HMACUser.EDIT,
        timeout: float = DEFAULT_TIMEOUT,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_connections: int = 20,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.wait_timeout = wait_timeout
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()
        self._monotonic = monotonic
        self._sleep = sleep
        self._rng = rng or random.Random(os.urandom(32))
        self._signer = HMACSigner(auth_type, hmac_key)
        self._clock = clock
        self._pool: ConnectionPool | None = None
        self._http: httpx.Client | None = None
        if transport is None:
            self._pool = ConnectionPool(self.base_url, max_connections=max_connections, timeout=timeout,
                                        headers={"Accept": "application/json", "User-Agent": "metalcore"})
        else:
            self._http = httpx.Client(
                base_url=self.base_url + "/",
                auth=HMACAuth(self._signer, clock, self._rng),
                timeout=httpx.Timeout(timeout),
                transport=transport,
                limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
                headers={"Accept": "application/json"},
            )

    @classmethod
    def from_parts(cls, protocol: str, ip: str, port: int, basepath: str, hmac_key: str | bytes,
                   **kwargs: Any) -> "MetalAPIClient":
        """Build from the four METAL_CORE_METAL_API_* values (§7) as plain arguments."""
        return cls(build_base_url(protocol, ip, port, basepath), hmac_key, **kwargs)

    def __repr__(self) -> str:
        return f"MetalAPIClient(base_url={self.base_url!r})"

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._http is not None:
            self._http.close()

    def __enter__(self) -> "MetalAPIClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the one request loop -------------------------------------------------------------------

    def _send(self, method: str, path: str, content: bytes | None, timeout: float | None) -> Answer:
        """One exchange, no retry. Raises pooled_http.Timeout/TransportFailure or httpx errors."""
        if self._pool is not None:
            headers = self._signer.headers(method, self._clock(), make_salt(self._rng))
            if content is not None:
                headers.update(_JSON_HEADERS)
            return self._pool.request(method, path, content, headers, timeout)
        assert self._http is not None
        resp = self._http.request(
            method, path.lstrip("/"), content=content, headers=_JSON_HEADERS if content is not None else None,
            timeout=httpx.Timeout(timeout) if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        return Answer(resp.status_code, resp.content, resp.request.method, resp.request.url.path,
                      resp.headers.get("content-type", ""))

    def _request(self, method: str, path: str, *, body: Any = None, idempotent: bool | None = None,
                 timeout: float | None = None, ok: tuple[int, ...] = (200,),
                 not_failures: tuple[int, ...] = ()) -> Answer:
        """Send, retrying idempotent calls; return the response if its status is in ``ok``.

        ``not_failures``: statuses returned as they are and counted as breaker success although >= 500
        (the wait's 504 is metal-api's normal "not yet").
        """
        if idempotent is None:
            idempotent = method == "GET"
        content = None if body is None else _encode(body)
        attempt = 0
        while True:
            now = self._monotonic()
            if not self.breaker.allow(now):
                raise CircuitOpen(
                    f"metal-api circuit open after {self.breaker.consecutive_failures} consecutive "
                    f"failures; next try in {self.breaker.retry_after(now):.1f}s ({method} {path})")
            error: Exception
            try:
                resp = self._send(method, path, content, timeout)
            except Timeout as e:
                error = MetalAPIUnavailable(f"metal-api timed out ({method} {path}): {e.kind}")
            except TransportFailure as e:
                error = MetalAPIUnavailable(f"metal-api unreachable ({method} {path}): {e}")
            except httpx.TimeoutException as e:
                error = MetalAPIUnavailable(f"metal-api timed out ({method} {path}): {type(e).__name__}")
            except httpx.TransportError as e:
                error = MetalAPIUnavailable(f"metal-api unreachable ({method} {path}): {type(e).__name__}: {e}")
            else:
                status = resp.status_code
                if status < 500 or status in not_failures:
                    self.breaker.record_success()
                    if status in ok or status in not_failures:
                        return resp
                    raise MetalAPIError(status, _message_of(resp), method=method, path=path)
                error = MetalAPIError(status, _message_of(resp), method=method, path=path)
            self.breaker.record_failure(self._monotonic())
            log = logger.bind(method=method, path=path)
            if not idempotent or not self.retry.should_retry(attempt):
                log.warning("metal-api call failed: {}", error)
                raise error
            delay = self.retry.delay(attempt, self._rng)
            log.info("metal-api call failed ({}), retry {} in {:.2f}s", error, attempt + 1, delay)
            self._sleep(delay)
            attempt += 1

    @staticmethod
    def _json(resp: Answer) -> Any:
        try:
            return json.loads(resp.content)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise MetalAPIError(resp.status_code, f"answer is not JSON: {resp.text[:200]!r}",
                                method=resp.method, path=resp.path) from None

    @staticmethod
    def _id(value: str) -> str:
        if not value:
            raise ValueError("an empty id would address the collection, not one object")
        return quote(value, safe="")

    # --- machines -------------------------------------------------------------------------------

    def find_machines_by_mac(self, mac: str) -> list[dict]:
        """POST /v1/machine/find {"nics_mac_addresses": [mac]} (view) -> machines owning that NIC."""
        resp = self._request("POST", "/v1/machine/find", body={"nics_mac_addresses": [mac]}, idempotent=True)
        result = self._json(resp)
        return result if isinstance(result, list) else []

    def get_machine(self, machine_id: str) -> dict:
        """GET /v1/machine/{id} (view) -> v1.MachineResponse; 404 raises MetalAPIError(404)."""
        return self._json(self._request("GET", f"/v1/machine/{self._id(machine_id)}"))

    def register_machine(self, body: dict) -> tuple[int, dict]:
        """POST /v1/machine/register (edit) -> (201 created | 200 updated, v1.MachineResponse)."""
        resp = self._request("POST", "/v1/machine/register", body=body, ok=(200, 201))
        return resp.status_code, self._json(resp)

    def wait_for_allocation(self, machine_id: str, timeout: float | None = None) -> dict | None:
        """GET /v1/machine/{id}/wait (edit) long-poll: the machine once allocated, None on the server's
        504 after 30 s. Never retried here: the caller loops (metal-hammer retried at once on 504)."""
        timeout = self.wait_timeout if timeout is None else timeout
        if timeout <= 0:
            raise ValueError(f"wait timeout must be > 0, got {timeout}")
        resp = self._request("GET", f"/v1/machine/{self._id(machine_id)}/wait", idempotent=False,
                             timeout=timeout, not_failures=(504,))
        if resp.status_code == 504:
            return None
        return self._json(resp)

    def add_provisioning_event(self, machine_id: str, event: dict) -> dict:
        """POST /v1/machine/{id}/event (edit) {"event", "message"?, "time"?} -> recent events."""
        return self._json(self._request("POST", f"/v1/machine/{self._id(machine_id)}/event", body=event))

    def finalize_allocation(self, machine_id: str, body: dict) -> dict:
        """POST /v1/machine/{id}/finalize-allocation (edit) -> v1.MachineResponse."""
        return self._json(self._request("POST", f"/v1/machine/{self._id(machine_id)}/finalize-allocation",
                                        body=body))

    def abort_reinstall(self, machine_id: str, body: dict) -> dict | None:
        """POST /v1/machine/{id}/abort-reinstall (edit) {"primary_disk_wiped"} -> v1.BootInfo or None.

        The path id IS set here (metal-core's go client forgot it, research note §1.5)."""
        return self._json(self._request("POST", f"/v1/machine/{self._id(machine_id)}/abort-reinstall",
                                        body=body))

    def get_ipmi(self, machine_id: str) -> dict:
        """GET /v1/machine/{id}/ipmi (view) -> v1.MachineIPMIResponse (machine + "ipmi" credentials)."""
        return self._json(self._request("GET", f"/v1/machine/{self._id(machine_id)}/ipmi"))

    def set_chassis_identify_led_state(self, machine_id: str, body: dict) -> dict:
        """POST /v1/machine/{id}/chassis-identify-led-state (edit) {"value","description"}."""
        return self._json(self._request(
            "POST", f"/v1/machine/{self._id(machine_id)}/chassis-identify-led-state", body=body))

    # --- partition and switches -----------------------------------------------------------------

    def get_partition(self, partition_id: str) -> dict:
        """GET /v1/partition/{id} -> v1.PartitionResponse (bootconfig: imageurl, kernelurl, commandline)."""
        return self._json(self._request("GET", f"/v1/partition/{self._id(partition_id)}"))

    def register_switch(self, body: dict) -> tuple[int, dict]:
        """POST /v1/switch/register (edit) -> (201 created | 200 updated, v1.SwitchResponse)."""
        resp = self._request("POST", "/v1/switch/register", body=body, ok=(200, 201))
        return resp.status_code, self._json(resp)

    def get_switch(self, switch_id: str) -> dict:
        """GET /v1/switch/{id} -> v1.SwitchResponse, whose nics carry the desired vrf per port."""
        return self._json(self._request("GET", f"/v1/switch/{self._id(switch_id)}"))

    def notify_switch(self, switch_id: str, body: dict) -> dict:
        """POST /v1/switch/{id}/notify (edit) {"sync_duration": ns, "error": str|None}."""
        return self._json(self._request("POST", f"/v1/switch/{self._id(switch_id)}/notify", body=body))
