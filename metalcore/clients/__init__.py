"""Clients of metalcore's peers (I/O lives here; the pure parts they use live in metalcore/protocol/).

``metal_api``: the Metal API (HMAC-signed HTTP, retries, circuit breaker); ``resilience``: its pure
retry policy and circuit breaker.
"""

from metalcore.clients.metal_api import MetalAPIClient, build_base_url
from metalcore.clients.resilience import CircuitBreaker, RetryPolicy

__all__ = ["CircuitBreaker", "MetalAPIClient", "RetryPolicy", "build_base_url"]
