"""OpenTelemetry tracing of the request path: off unless the standard ``OTEL_*`` variables
ask for it, and then free of anything that could identify a patient.

What the proxy sees is this module's small surface, the same whether tracing is on or off:

- :class:`Tracing`, built once at the composition root (:func:`start_tracing`), hands out
- a :class:`RequestSpan` per caller request (the SERVER span), which hands out
- an :class:`AttemptSpan` per call to EXACT (a CLIENT span).

The classes here are the *off* implementation: every method does nothing or returns what it
was given (the same awaitable, the breakers' own ticket), so tracing off costs a few method
calls per request and imports nothing of OpenTelemetry. The *on* implementation lives in
:mod:`gateway.tracing.sdk`, imported only by :func:`start_tracing` when tracing is
requested, so the SDK is an optional extra (``pip install "exact-gateway[otel]"``).

What a span may carry is decided here, for both: the route *template* (never the raw path,
a query string or a record id), the method, status codes, the gateway's reason, the EXACT
API's scheme, host and port, counts and waits. No practice id either: practice ids are
allowed in the gateway's own logs, but spans leave for a tracing backend with its own
readers and retention, and the route template already says which kind of call it was.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol, TypeVar

from multidict import CIMultiDictProxy

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.errors import GatewayError
    from gateway.resilience import Resilience, Ticket
    from gateway.settings import TracingSettings

T = TypeVar("T")
# What a span event may carry: names and numbers the gateway chose, never a caller's bytes.
EventAttributes = Mapping[str, str | int | float]


class TokenGetter(Protocol):
    """The part of :class:`gateway.tokens.TokenSource` a token wait needs."""

    def has_usable_token(self) -> bool: ...

    def get(self, wait: float | None = None) -> Awaitable[str]: ...


class AttemptSpan:
    """One attempt's CLIENT span. Off: the caller's ``traceparent`` passes through untouched."""

    __slots__ = ()

    def inject(self, headers: list[tuple[str, str]]) -> None:
        """Put this span's trace context into the headers sent to EXACT (wire order)."""

    def sent(self, pending: Awaitable[T]) -> Awaitable[T]:
        """The attempt's send, ending the span with its outcome (off: ``pending`` itself)."""
        return pending


class RequestSpan:
    """One caller request's SERVER span, parent of its attempts' spans."""

    __slots__ = ()

    @property
    def trace_id(self) -> str | None:
        """The trace id (32 hex digits); None when tracing is off."""
        return None

    def log_fields(self) -> Mapping[str, str]:
        """Fields for the access log line: ``trace_id`` when tracing is on, none when off."""
        return _NO_FIELDS

    def attempt(self, method: str, route: str, resend_count: int) -> AttemptSpan:
        """Start the CLIENT span of one attempt (``resend_count`` earlier attempts)."""
        return NO_ATTEMPT

    def token(self, tokens: TokenGetter, wait: float) -> Awaitable[str]:
        """A token from ``tokens``; a wait for one (or its failure) is recorded as events."""
        return tokens.get(wait=wait)

    def admit(self, resilience: Resilience, practice_id: str | None) -> Ticket:
        """Clear an attempt with the breakers; a refusal or a probe is recorded as an event."""
        return resilience.admit(practice_id)

    def breaker_opened(self, error: GatewayError) -> None:
        """The attempt just observed opened a breaker (``error`` says which)."""

    def event(self, name: str, attributes: EventAttributes) -> None:
        """A span event with attributes the gateway chose (retries and their reasons)."""

    def end(self, route: str, status: int, error: str | None) -> None:
        """End the span with what the caller got: route template, status, gateway reason."""


_NO_FIELDS: Mapping[str, str] = MappingProxyType({})
NO_ATTEMPT = AttemptSpan()
NO_TRACE = RequestSpan()


class Tracing:
    """Hands out request spans; this one, tracing off, hands out the no-op span."""

    enabled = False

    def request(self, method: str, headers: CIMultiDictProxy[str]) -> RequestSpan:
        """The SERVER span of a caller request, continuing the caller's W3C trace context."""
        return NO_TRACE

    async def shutdown(self) -> None:
        """Export what is still queued and stop (called once, when the gateway stops)."""


def start_tracing(settings: TracingSettings, api_url: str) -> Tracing:
    """Tracing as the ``OTEL_*`` variables ask: the no-op one, or the SDK's exporting over
    OTLP/HTTP to the collector they name. ``api_url`` is the EXACT API's base URL (the
    CLIENT spans' ``server.address``/``server.port``)."""
    if not settings.enabled:
        return Tracing()
    try:
        # Only here, and only when asked for: tracing off never loads the SDK.
        from gateway.tracing.sdk import SdkTracing  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise
        raise ConfigError(
            "OTEL_* variables ask for tracing, but the OpenTelemetry SDK is not installed:"
            ' pip install "exact-gateway[otel]" (or set OTEL_SDK_DISABLED=true)'
        ) from None
    return SdkTracing(api_url)
