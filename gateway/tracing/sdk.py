"""Tracing on: the OpenTelemetry SDK behind :mod:`gateway.tracing`'s surface.

Imported only when the ``OTEL_*`` variables ask for tracing (the package extra ``otel``).
One :class:`~opentelemetry.sdk.trace.TracerProvider` per gateway, never the process-global
one, so two gateways in one process (the tests) keep their spans apart. The SDK reads its own
variables (service name and resource attributes, sampler, batch processor, exporter endpoint,
headers, time-out, certificates); the gateway adds ``service.name=exact-gateway`` when none is
given, and ``service.version``. Spans leave in batches from the SDK's own thread, so the event
loop never waits on the collector; when the queue is full the SDK drops spans, not requests.

Context: the caller's ``traceparent``/``tracestate`` are extracted with the W3C Trace Context
propagator (``OTEL_PROPAGATORS`` is not consulted: the contract is W3C), a malformed or
repeated ``traceparent`` starts a new trace, and each attempt sends *its* CLIENT span's
context to EXACT in place of the caller's.

A CLIENT span lasts until EXACT's response head (or the attempt's failure); the SERVER span
lasts until the gateway's handler returns, streaming of the body included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import TypeVar

from multidict import CIMultiDictProxy
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

from gateway import __version__
from gateway.errors import CircuitOpen, GatewayError, UpstreamCircuitOpen
from gateway.resilience import Resilience, Ticket
from gateway.routes import KNOWN_METHODS
from gateway.tracing import (
    AttemptSpan,
    EventAttributes,
    RequestSpan,
    TokenGetter,
    Tracing,
)

T = TypeVar("T")
DEFAULT_SERVICE_NAME = "exact-gateway"
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACEPARENT = "traceparent"
_TRACESTATE = "tracestate"
# nginx's "client closed request": the caller left before the answer.
_CLIENT_CLOSED = 499


class _CallerHeaders(Getter[CIMultiDictProxy[str]]):
    """Reads trace context from the caller's headers. Two ``traceparent`` headers are no
    context at all (which one would be the parent?); ``tracestate`` lines join with commas,
    as the W3C specification says."""

    def get(self, carrier: CIMultiDictProxy[str], key: str) -> list[str] | None:
        values = carrier.getall(key, [])
        if not values or (key == _TRACEPARENT and len(values) > 1):
            return None
        return values

    def keys(self, carrier: CIMultiDictProxy[str]) -> list[str]:
        return list(carrier.keys())


_GETTER = _CallerHeaders()


def _method(method: str) -> str:
    # Semantic conventions: a method outside the known set is _OTHER (and its text, which a
    # caller chose, stays out of the span).
    return method if method in KNOWN_METHODS else "_OTHER"


class SdkAttemptSpan(AttemptSpan):
    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def inject(self, headers: list[tuple[str, str]]) -> None:
        # The caller's context is replaced, never sent beside ours: EXACT's spans hang under
        # this attempt. A tracestate is sent only when the trace carries one.
        headers[:] = [
            (name, value)
            for name, value in headers
            if name.lower() not in {_TRACEPARENT, _TRACESTATE}
        ]
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=set_span_in_context(self._span))
        headers.extend(carrier.items())

    def sent(self, pending: Awaitable[T]) -> Awaitable[T]:
        return self._outcome(pending)

    async def _outcome(self, pending: Awaitable[T]) -> T:
        span = self._span
        try:
            response = await pending
        except GatewayError as error:
            self._fail(error.reason)
            raise
        except BaseException as error:
            # The class only: a foreign message may quote a URL with its query string.
            self._fail(type(error).__name__)
            raise
        failure = getattr(response, "failure", None)
        if isinstance(failure, str):
            # An attempt outcome that is a failure (the upstream edge returns, not raises).
            self._fail(failure)
            return response
        status = getattr(response, "status", None)
        if isinstance(status, int):
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                span.set_attribute("error.type", str(status))
                span.set_status(Status(StatusCode.ERROR))
        span.end()
        return response

    def _fail(self, error_type: str) -> None:
        self._span.set_attribute("error.type", error_type)
        self._span.set_status(Status(StatusCode.ERROR))
        self._span.end()


class SdkRequestSpan(RequestSpan):
    __slots__ = ("_context", "_method", "_owner", "_span")

    def __init__(self, owner: SdkTracing, span: Span, method: str) -> None:
        self._owner = owner
        self._span = span
        self._method = method  # already _OTHER for an unknown method
        self._context = set_span_in_context(span)

    @property
    def trace_id(self) -> str | None:
        return format(self._span.get_span_context().trace_id, "032x")

    def log_fields(self) -> Mapping[str, str]:
        return {"trace_id": format(self._span.get_span_context().trace_id, "032x")}

    def attempt(self, method: str, route: str, resend_count: int) -> AttemptSpan:
        owner = self._owner
        name = _method(method)
        attributes: dict[str, str | int] = {
            "http.request.method": name,
            "server.address": owner.api_host,
            "server.port": owner.api_port,
            "url.scheme": owner.api_scheme,
            "url.template": route,
        }
        if resend_count:
            attributes["http.request.resend_count"] = resend_count
        span = owner.tracer.start_span(
            f"{name} {route}", context=self._context, kind=SpanKind.CLIENT, attributes=attributes
        )
        return SdkAttemptSpan(span)

    def token(self, tokens: TokenGetter, wait: float) -> Awaitable[str]:
        if tokens.has_usable_token():
            return tokens.get(wait=wait)
        return self._token_wait(tokens.get(wait=wait))

    async def _token_wait(self, pending: Awaitable[str]) -> str:
        self._span.add_event("token.wait")
        try:
            token = await pending
        except GatewayError as error:
            self._span.add_event("token.unavailable", {"error.type": error.reason})
            raise
        self._span.add_event("token.ready")
        return token

    def admit(self, resilience: Resilience, practice_id: str | None) -> Ticket:
        try:
            ticket = resilience.admit(practice_id)
        except (CircuitOpen, UpstreamCircuitOpen) as error:
            self._span.add_event("breaker.refused", _breaker_attributes(error))
            raise
        if ticket.practice_probe or ticket.upstream_probe:
            self._span.add_event(
                "breaker.probe",
                {"exact_gateway.breaker": "practice" if ticket.practice_probe else "upstream"},
            )
        return ticket

    def breaker_opened(self, error: GatewayError) -> None:
        self._span.add_event("breaker.opened", _breaker_attributes(error))

    def event(self, name: str, attributes: EventAttributes) -> None:
        self._span.add_event(name, dict(attributes))

    def end(self, route: str, status: int, error: str | None) -> None:
        span = self._span
        # Semantic conventions: "{method} {route}", the route known only once parsed.
        span.update_name(f"{self._method} {route}")
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        if error is None and status >= 500:
            error = str(status)
        if error is None and status == _CLIENT_CLOSED:
            error = "client_disconnected"
        if error is not None:
            span.set_attribute("error.type", error)
            if status >= 500 or status == _CLIENT_CLOSED:
                span.set_status(Status(StatusCode.ERROR))
        span.end()


def _breaker_attributes(error: GatewayError) -> dict[str, str | float]:
    which = "upstream" if isinstance(error, UpstreamCircuitOpen) else "practice"
    attributes: dict[str, str | float] = {
        "exact_gateway.breaker": which,
        "error.type": error.reason,
    }
    if error.retry_after is not None:
        attributes["exact_gateway.retry_after_s"] = round(error.retry_after, 3)
    return attributes


class SdkTracing(Tracing):
    """The SDK's tracer provider with a batch processor and the OTLP/HTTP exporter."""

    enabled = True

    def __init__(self, api_url: str) -> None:
        url = URL(api_url)
        self.api_scheme = url.scheme
        self.api_host = url.host or ""
        self.api_port = url.port or (443 if url.scheme == "https" else 80)
        resource = Resource.create({SERVICE_VERSION: __version__})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        # shutdown_on_exit=False: the gateway shuts it down itself, in order, when it stops.
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("exact_gateway", __version__)

    def request(self, method: str, headers: CIMultiDictProxy[str]) -> RequestSpan:
        parent = _PROPAGATOR.extract(headers, context=Context(), getter=_GETTER)
        name = _method(method)
        span = self.tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": name, "url.scheme": "http"},
        )
        return SdkRequestSpan(self, span, name)

    async def shutdown(self) -> None:
        # Flushing may wait on the collector (up to the exporter's time-out): off the loop.
        await asyncio.to_thread(self.provider.shutdown)
