"""Errors of metalcore above the pure codecs (the codecs have metalcore/protocol/errors.py).

    Exception
     └── MetalcoreError                  base; ``http_status_hint`` says what the hammer proxy answers
          ├── HMACError                   an Authorization header could not be accepted (protocol/hmac.py)
          │    ├── HMACNotApplicable      not this user's header: none, malformed, or another user's
          │    │                          type; metal-api then tries the next user, finally "guest"
          │    └── HMACRejected           this user's header but wrong: bad X-Date, too old, wrong MAC;
          │                               metal-api answers 403 at once
          ├── MetalAPIError               metal-api ANSWERED, with a status we did not expect
          │                               (``status``, ``message`` from its {"statuscode","message"})
          └── MetalAPIUnavailable         metal-api did not answer: connection refused/reset, timeout
               └── CircuitOpen            ... or we did not even ask, the circuit breaker is open

Remote errors (MetalAPIError: the peer said no) and local unavailability (MetalAPIUnavailable: we could
not reach it) are different types on purpose: the first is not retried unless it is a 5xx of an
idempotent call, the second always is for idempotent calls and trips the breaker (h11 ``_util.py`` splits
LocalProtocolError from RemoteProtocolError the same way; IPA ``errors.py`` carries ``status_code``).

``http_status_hint`` is what a stage serving HTTP (the hammer proxy) should answer when one of these
escapes a handler: 502 for a peer that answered nonsense, 503 for a peer that is away.
"""

from __future__ import annotations

__all__ = [
    "CircuitOpen",
    "HMACError",
    "HMACNotApplicable",
    "HMACRejected",
    "MetalAPIError",
    "MetalAPIUnavailable",
    "MetalcoreError",
]


class MetalcoreError(Exception):
    """Base of every metalcore error that may cross a module boundary."""

    http_status_hint: int = 500

    def __init__(self, message: str = "", *, http_status_hint: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if http_status_hint is not None:
            self.http_status_hint = http_status_hint

    def to_dict(self) -> dict:
        """JSON body for an HTTP error answer (metal-api's httperrors shape: statuscode + message)."""
        return {"statuscode": self.http_status_hint, "message": self.message or type(self).__name__}


class HMACError(MetalcoreError):
    """An HMAC Authorization header was not accepted. Never carries the key, only what was seen."""

    http_status_hint = 403  # metal-lib rest.UserAuth answers 403 for every auth failure


class HMACNotApplicable(HMACError):
    """No header, not "<type> <mac>", or another user's type: metal-api moves on to the next user."""


class HMACRejected(HMACError):
    """The header names this user but the date is unreadable or too old, or the MAC is wrong."""


class MetalAPIError(MetalcoreError):
    """metal-api answered with an unexpected status. ``status`` is its HTTP status."""

    http_status_hint = 502

    def __init__(self, status: int, message: str = "", *, method: str = "", path: str = "") -> None:
        self.status = status
        self.method = method
        self.path = path
        where = f" ({method} {path})" if method else ""
        super().__init__(message or f"metal-api answered {status}")
        self.detail = f"metal-api answered {status}{where}: {message}"

    def __str__(self) -> str:
        return self.detail

    def __repr__(self) -> str:
        return f"MetalAPIError(status={self.status!r}, message={self.message!r})"


class MetalAPIUnavailable(MetalcoreError):
    """metal-api could not be reached (refused, reset, timed out) or the breaker is open."""

    http_status_hint = 503


class CircuitOpen(MetalAPIUnavailable):
    """The circuit breaker is open: too many consecutive failures, waiting for the cool-down."""
