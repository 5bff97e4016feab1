"""The hammer proxy's errors and its one error handler: every failure is JSON ``{"message": ...}``.

    MetalcoreError (metalcore/errors.py)
     └── HammerError                 status carried by the class (flask docs/errorhandling.rst, IPA errors.py)
          ├── BadRequest         400  body not JSON, not the spec's shape, or a bad path parameter
          ├── NotFound           404  no such route / no such machine
          ├── NotAcceptable      406  report with success=false: nothing finalized
          ├── Incomplete         417  allocated, but the allocation or its image is missing
          ├── BootOrderFailed    500  the IPMI stage could not set the boot device: nothing finalized
          └── BootOrderTimeout   504  the IPMI stage did not answer in time: nothing finalized

Errors of the Metal API (metalcore.errors) are mapped by :func:`status_for`:

    MetalAPIError 4xx (404 no such machine, 422 refused register...)  -> the same 4xx, its message
    MetalAPIError 401/403 (metalcore's HMAC key is wrong)            -> 502: the hammer cannot fix it
    MetalAPIError 503 / 504 (metal-api itself says it is away / slow)  -> 503 / 504
    MetalAPIError other 5xx                                           -> 502
    MetalAPIUnavailable caused by a timeout                           -> 504
    MetalAPIUnavailable (refused, reset, breaker open)                -> 503

Never a stack trace in an answer: an unexpected exception is logged here with its trace and answered
500 "internal error".
"""

from __future__ import annotations

import httpx
from flask import Flask, Response, json
from loguru import logger
from werkzeug.exceptions import HTTPException

from metalcore.errors import CircuitOpen, MetalAPIError, MetalAPIUnavailable, MetalcoreError

__all__ = ["BadRequest", "BootOrderFailed", "BootOrderTimeout", "HammerError", "Incomplete", "NotAcceptable",
           "NotFound", "error_response", "register_error_handlers", "status_for"]


class HammerError(MetalcoreError):
    http_status_hint = 500


class BadRequest(HammerError):
    http_status_hint = 400


class NotFound(HammerError):
    http_status_hint = 404


class NotAcceptable(HammerError):
    http_status_hint = 406


class Incomplete(HammerError):
    http_status_hint = 417


class BootOrderFailed(HammerError):
    http_status_hint = 500


class BootOrderTimeout(HammerError):
    http_status_hint = 504


def status_for(e: BaseException) -> int:
    """The status the hammer gets for an error (see the module docstring)."""
    if isinstance(e, MetalAPIError):
        if e.status in (401, 403):
            return 502
        if 400 <= e.status < 500:
            return e.status
        return e.status if e.status in (503, 504) else 502
    if isinstance(e, MetalAPIUnavailable):
        return 504 if _is_timeout(e) else 503
    if isinstance(e, MetalcoreError):
        return e.http_status_hint
    if isinstance(e, HTTPException):
        return e.code or 500
    return 500


def _is_timeout(e: MetalAPIUnavailable) -> bool:
    if isinstance(e, CircuitOpen):
        return False
    if isinstance(e.__context__, httpx.TimeoutException) or isinstance(e.__cause__, httpx.TimeoutException):
        return True
    # the client raises the error of its last attempt outside the except block, so the httpx cause is
    # gone; its message is the only trace ("metal-api timed out (GET /v1/...)")
    return "timed out" in (e.message or "")


def message_for(e: BaseException) -> str:
    if isinstance(e, MetalAPIError):
        if e.status in (401, 403):
            return (f"metal-api refused metalcore's credentials ({e.status}: {e.message}); "
                    "check METAL_CORE_HMAC_KEY")
        return f"metal-api: {e.detail}"
    if isinstance(e, MetalAPIUnavailable):
        return f"metal-api unavailable: {e.message}"
    if isinstance(e, MetalcoreError):
        return e.message or type(e).__name__
    if isinstance(e, HTTPException):
        return _HTTP_MESSAGES.get(e.code or 0) or e.description or e.name
    return "internal error"


# werkzeug's texts are written for browsers; these say what a client of this API should do instead
_HTTP_MESSAGES = {
    404: "no such route; metal-core's API is described at /apidocs.json",
    405: "method not allowed on this route; see /apidocs.json",
    413: "request body over the 1 MiB limit",
}


def error_response(status: int, message: str) -> Response:
    resp = Response(json.dumps({"message": message}), status=status, mimetype="application/json")
    if status == 503:
        resp.headers["Retry-After"] = "5"
    return resp


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(MetalcoreError)
    def _metalcore(e: MetalcoreError) -> Response:
        return error_response(status_for(e), message_for(e))

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException) -> Response:
        # 404 unknown route, 405 wrong method, 413 body over the limit...: JSON, not werkzeug's HTML
        resp = error_response(e.code or 500, message_for(e))
        if e.code == 405 and hasattr(e, "valid_methods") and e.valid_methods:
            resp.headers["Allow"] = ", ".join(e.valid_methods)
        return resp

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Response:
        logger.opt(exception=e).error("hammer proxy: unexpected {}: {}", type(e).__name__, e)
        return error_response(500, "internal error (logged by metalcore)")
