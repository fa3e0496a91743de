"""The one error tree of exact-gateway.

Every error the gateway itself answers with is a :class:`GatewayError`; each class knows its
HTTP status and its ``reason`` (also the ``X-Gateway-Error`` header, the metric label and the
log field). Foreign exceptions (aiohttp, timeouts) are translated into this tree at the single
upstream boundary, :mod:`gateway.upstream`, and at the token boundary, :mod:`gateway.tokens`.

::

    Exception
    ├── ConfigError                      bad settings or refused credentials: stop at start-up
    │   └── CredentialsRejected          the identity server refused our client (invalid_client...)
    ├── TokenEndpointError               the identity server failed or answered unusably
    ├── CallerGone                       the caller went away mid-request: nothing to answer
    └── GatewayError                     answered to the caller as problem+json
        ├── BadRequest                   400 bad_request: not a request we will forward
        ├── PracticeVersionTooOld        400 practice_version_too_old: EXACT at the practice too old
        ├── PracticeNotSubscribed        403 practice_not_subscribed: not on the subscriptions list
        ├── MethodNotAllowed             405 method_not_allowed: a method outside the allow-list
        ├── RequestTimeout               408 request_timeout: the caller was too slow sending
        ├── IdempotencyKeyInUse          409 idempotency_key_in_use: the key's first request runs
        ├── UriTooLong                   414 uri_too_long: the request target is too long
        ├── IdempotencyKeyMismatch       422 idempotency_key_mismatch: the key named another request
        ├── RequestHeaderFieldsTooLarge  431 request_header_fields_too_large: head too big
        ├── TokenUnavailable             503 token_unavailable: no usable bearer token
        ├── PracticePaused               503 practice_paused: an operator paused the practice
        ├── CircuitOpen                  503 circuit_open: the practice's breaker is open
        ├── UpstreamCircuitOpen          503 upstream_circuit_open: the partner-wide breaker is open
        ├── PracticeBusy                 503 practice_busy: the practice's concurrency limit is full
        ├── GatewayBusy                  503 gateway_busy: the global concurrency limit is full
        ├── RetryBudgetExhausted         503 retry_budget_exhausted: retries would multiply load
        ├── UpstreamUnreachable          502 upstream_unreachable: the EXACT host is not reachable
        ├── UpstreamBadResponse          502 upstream_bad_response: EXACT's answer is unusable
        ├── UpstreamTimeout              504 upstream_timeout: an attempt got no answer in time
        └── DeadlineExceeded             504 deadline_exceeded: the request's deadline passed
"""

from __future__ import annotations

import json
import math
from json.encoder import encode_basestring_ascii as _json_string  # the C encoder json uses
from typing import Any, ClassVar


class ConfigError(Exception):
    """Configuration the gateway cannot run with. The message names the setting, never a secret."""


class CredentialsRejected(ConfigError):
    """The identity server refused our client id, secret or scopes (invalid_client/_scope)."""

    def __init__(self, error: str, description: str | None) -> None:
        self.error = error
        detail = f": {description}" if description else ""
        super().__init__(f"the identity server refused the credentials ({error}{detail})")


class TokenEndpointError(Exception):
    """The identity server could not be reached or gave an unusable answer.

    ``kind`` is one of ``timeout``, ``unreachable``, ``server_error``, ``bad_response``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# nginx's convention for "the caller closed the connection before the answer": logged and
# counted, never written on the wire.
CLIENT_CLOSED_REQUEST = 499


class CallerGone(Exception):
    """The caller disconnected (e.g. while sending its body): logged as 499, never blamed on
    EXACT, whose reachability it says nothing about."""


class GatewayError(Exception):
    """An error answered by the gateway itself (not passed through from EXACT)."""

    status: ClassVar[int] = 500
    reason: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Gateway error"
    # The constant parts of the problem body, JSON-encoded once per class (problem_body).
    _body_head: ClassVar[str] = ""
    _body_reason: ClassVar[str] = ""
    _generic_problem: ClassVar[bool] = True  # no extra fields: problem_body's cheap path

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._encode_constants()

    @classmethod
    def _encode_constants(cls) -> None:
        cls._body_head = (
            f'{{"type": {_json_string("urn:exact-gateway:error:" + cls.reason)},'
            f' "title": {_json_string(cls.title)}, "status": {int(cls.status)}, "detail": '
        )
        cls._body_reason = f', "reason": {_json_string(cls.reason)}, "request_id": '
        cls._generic_problem = cls.problem is GatewayError.problem

    def __init__(
        self,
        detail: str,
        *,
        practice_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.practice_id = practice_id
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str | None:
        """``Retry-After`` in whole seconds, rounded up (never 0 for a positive wait)."""
        if self.retry_after is None:
            return None
        return str(max(0, math.ceil(self.retry_after)))

    def headers(self, request_id: str) -> dict[str, str]:
        """The response headers every gateway error carries (and ``Retry-After``/``Allow``)."""
        headers = {
            "X-Gateway-Error": self.reason,
            "X-Request-ID": request_id,
            "Cache-Control": "no-store",
        }
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(0, math.ceil(self.retry_after)))
        return headers

    def problem(self, request_id: str) -> dict[str, Any]:
        """The RFC 9457 problem document for this error."""
        body: dict[str, Any] = {
            "type": f"urn:exact-gateway:error:{self.reason}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "reason": self.reason,
            "request_id": request_id,
        }
        if self.practice_id is not None:
            body["practice_id"] = self.practice_id
        if self.retry_after is not None:
            body["retry_after"] = max(0, math.ceil(self.retry_after))
        return body

    def problem_body(self, request_id: str) -> bytes:
        """``json.dumps(self.problem(request_id)).encode()``, byte for byte, without the
        dictionary and the generic encoder: the constant parts are encoded once per class and
        each string goes through the same C escaping ``json.dumps`` uses (ASCII only, so a
        hostile detail or id cannot break out of its string). Gateway-made answers (an open
        breaker's above all) are meant to be far cheaper than a proxied request."""
        if not self._generic_problem:
            return json.dumps(self.problem(request_id)).encode()  # extra fields: generic path
        body = (
            f"{self._body_head}{_json_string(self.detail)}"
            f"{self._body_reason}{_json_string(request_id)}"
        )
        if self.practice_id is not None:
            body = f'{body}, "practice_id": {_json_string(self.practice_id)}'
        if self.retry_after is not None:
            body = f'{body}, "retry_after": {max(0, math.ceil(self.retry_after))}'
        return f"{body}}}".encode("ascii")


GatewayError._encode_constants()  # subclasses encode theirs in __init_subclass__


class BadRequest(GatewayError):
    status = 400
    reason = "bad_request"
    title = "Request refused by the gateway"


# Methods forwarded to EXACT. Anything else (TRACE, which echoes the request and so the bearer
# token, WebDAV and SSDP methods) is refused before anything is sent.
ALLOWED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class PracticeVersionTooOld(GatewayError):
    """The practice's known EXACT version is below the route's minimum: EXACT would refuse it
    with 400 too, so it is answered here and never relayed."""

    status = 400
    reason = "practice_version_too_old"
    title = "The practice's EXACT version is too old for this request"

    def __init__(self, detail: str, *, practice_id: str, version: str, minimum: str) -> None:
        super().__init__(detail, practice_id=practice_id)
        self.pms_version = version
        self.minimum_version = minimum

    def problem(self, request_id: str) -> dict[str, Any]:
        return super().problem(request_id) | {
            "pms_version": self.pms_version,
            "minimum_version": self.minimum_version,
        }


class PracticeNotSubscribed(GatewayError):
    """The practice is not on a fresh list of active subscriptions (checked again once)."""

    status = 403
    reason = "practice_not_subscribed"
    title = "The practice is not subscribed to this product"


class PracticePaused(GatewayError):
    """An operator paused the practice (``PRACTICE_PAUSES_FILE``) until a time."""

    status = 503
    reason = "practice_paused"
    title = "The practice is paused by an operator"


class MethodNotAllowed(GatewayError):
    status = 405
    reason = "method_not_allowed"
    title = "Method not allowed by the gateway"

    def headers(self, request_id: str) -> dict[str, str]:
        return super().headers(request_id) | {"Allow": ", ".join(ALLOWED_METHODS)}


class RequestTimeout(GatewayError):
    """The caller was too slow: its request head or body stopped arriving, or it stopped
    reading the answer. Never counted against a practice or the EXACT API."""

    status = 408
    reason = "request_timeout"
    title = "The request did not arrive in time"


class UriTooLong(GatewayError):
    status = 414
    reason = "uri_too_long"
    title = "Request target too long"


class RequestHeaderFieldsTooLarge(GatewayError):
    status = 431
    reason = "request_header_fields_too_large"
    title = "Request header fields too large"


class IdempotencyKeyInUse(GatewayError):
    status = 409
    reason = "idempotency_key_in_use"
    title = "A request with this Idempotency-Key is in progress"


class IdempotencyKeyMismatch(GatewayError):
    status = 422
    reason = "idempotency_key_mismatch"
    title = "This Idempotency-Key was used for a different request"


class TokenUnavailable(GatewayError):
    status = 503
    reason = "token_unavailable"
    title = "No access token available"


class CircuitOpen(GatewayError):
    status = 503
    reason = "circuit_open"
    title = "The practice is failing; calls are paused"

    @classmethod
    def for_practice(cls, practice_id: str, retry_after: float) -> CircuitOpen:
        """The error an open practice breaker answers with, made without the generic
        keyword path of ``__init__`` (half its cost): in an outage this is the gateway's most
        frequent answer. Same attributes as ``CircuitOpen(detail, practice_id=...,
        retry_after=...)``, which a unit test holds it to."""
        detail = (
            f"practice {practice_id} is not answering; the next probe is in {retry_after:.0f} s"
        )
        error = cls.__new__(cls, detail)  # BaseException.__new__ sets ``args``
        error.detail = detail
        error.practice_id = practice_id
        error.retry_after = retry_after
        return error


class UpstreamCircuitOpen(GatewayError):
    status = 503
    reason = "upstream_circuit_open"
    title = "The EXACT API is failing; calls are paused"


class PracticeBusy(GatewayError):
    status = 503
    reason = "practice_busy"
    title = "Too many requests in flight for this practice"


class GatewayBusy(GatewayError):
    status = 503
    reason = "gateway_busy"
    title = "Too many requests in flight"


class RetryBudgetExhausted(GatewayError):
    status = 503
    reason = "retry_budget_exhausted"
    title = "Retry budget exhausted"


class UpstreamUnreachable(GatewayError):
    """The EXACT host could not be reached, or the connection failed.

    ``sent`` is False only when the failure happened before any byte of the request left
    (connecting, TLS): then even a POST can be retried without risking a duplicate.
    """

    status = 502
    reason = "upstream_unreachable"
    title = "The EXACT API could not be reached"

    def __init__(self, detail: str, *, sent: bool = True, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.sent = sent


class UpstreamBadResponse(GatewayError):
    """EXACT's answer could not be used: a bad status line or status, an oversized or invalid
    header section, or a ``101`` the gateway did not ask for. Never passed on as an answer."""

    status = 502
    reason = "upstream_bad_response"
    title = "The EXACT API's answer could not be used"


class UpstreamTimeout(GatewayError):
    """No answer in time. ``connecting`` says the EXACT host itself did not accept us."""

    status = 504
    reason = "upstream_timeout"
    title = "The EXACT API did not answer in time"

    def __init__(self, detail: str, *, connecting: bool = False, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.connecting = connecting


class DeadlineExceeded(GatewayError):
    status = 504
    reason = "deadline_exceeded"
    title = "The request's deadline passed"
