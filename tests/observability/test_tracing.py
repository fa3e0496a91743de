"""OpenTelemetry tracing, exported over a real socket to an OTLP/HTTP receiver written here.

The receiver is a small aiohttp server at ``/v1/traces`` that keeps every export's raw bytes
and decodes them with ``opentelemetry-proto``; the gateway is configured only through the
standard ``OTEL_*`` variables, exactly as an operator would, with a short batch delay
(``OTEL_BSP_SCHEDULE_DELAY``) so spans arrive quickly. Tests wait on the spans arriving,
never on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.app import Gateway
from gateway.errors import ConfigError
from gateway.settings import TracingSettings
from gateway.tracing import start_tracing
from tests.fakes import GatewayFactory, ScriptedUpstream, gateway_settings, proxy_url, wait_until

CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
CALLER_TRACEPARENT = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"
PRACTICE = "PRAC-7731"
PATIENT_ID = "8d3c1f0e-5b7a-4c2e-9f41-0a6b2d9e7c15"
QUERY = "surname=Smith&dob=1961-04-02"
PATIENT_ROUTE = "/v1/Practices/{practiceId}/Patients/{id}"


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


@dataclass
class Exported:
    """One exported span, decoded: ids in hex, attributes and events as plain dicts."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int


@dataclass
class OtlpReceiver:
    """An OTLP/HTTP trace receiver: keeps the raw protobuf bytes and the decoded spans."""

    server: TestServer | None = None
    raw: list[bytes] = field(default_factory=list)
    spans: list[Exported] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/v1/traces"))

    async def _traces(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.raw.append(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource_spans in export.resource_spans:
            self.resources.append(
                {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(_decode(span) for span in scope_spans.spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        return app

    def of_kind(self, kind: int) -> list[Exported]:
        return [span for span in self.spans if span.kind == kind]

    async def wait_for(self, servers: int, clients: int) -> None:
        async def arrived() -> bool:
            return (
                len(self.of_kind(Span.SPAN_KIND_SERVER)) >= servers
                and len(self.of_kind(Span.SPAN_KIND_CLIENT)) >= clients
            )

        await wait_until(arrived, timeout=30)


def _decode(span: Span) -> Exported:
    return Exported(
        name=span.name,
        kind=span.kind,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        attributes={a.key: _value(a.value) for a in span.attributes},
        events=[(e.name, {a.key: _value(a.value) for a in e.attributes}) for e in span.events],
        status_code=span.status.code,
    )


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    scripted = OtlpReceiver()
    scripted.server = TestServer(scripted.app())
    await scripted.server.start_server()
    yield scripted
    await scripted.server.close()


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch, receiver: OtlpReceiver) -> None:
    """Tracing on, through the standard variables only, exporting to the test receiver."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")


async def _traced_gateway(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, **overrides: Any
) -> Gateway:
    values: dict[str, Any] = {
        "retry_backoff_base_seconds": 0.01,
        "retry_backoff_max_seconds": 0.02,
    }
    values.update(overrides)
    gateway = await start_gateway(gateway_settings(upstream.url, **values))
    assert gateway.proxy._tracing.enabled
    if not upstream.refuse_credentials:
        # Requests then find a token held (a wait for one would be an event of its own).
        await asyncio.wait_for(gateway.tokens.ready_event.wait(), 30)
    return gateway


def _fail_once_then_answer(upstream: ScriptedUpstream) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if len(upstream.seen) == 1:
            return web.json_response({"message": "practice offline"}, status=503)
        return web.json_response({"id": "opaque"})

    upstream.handler = handler


def _parent_of(traceparent: str | None) -> tuple[str, str]:
    assert traceparent is not None
    version, trace_id, parent_id, flags = traceparent.split("-")
    assert (version, len(trace_id), len(parent_id)) == ("00", 32, 16)
    assert int(flags, 16) & 1, "sampled"
    return trace_id, parent_id


@pytest.mark.usefixtures("otel_env")
async def test_a_retried_request_is_one_trace_continued_from_the_caller(
    start_gateway: GatewayFactory,
    upstream: ScriptedUpstream,
    receiver: OtlpReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The caller's trace id on every span; one SERVER span under the caller's span; one
    CLIENT span per attempt (the second with its resend count); EXACT received each CLIENT
    span's own context; the access log line carries the trace id."""
    _fail_once_then_answer(upstream)
    gateway = await _traced_gateway(start_gateway, upstream)
    async with aiohttp.ClientSession() as client:
        async with client.get(
            proxy_url(gateway, f"/v1/Practices/{PRACTICE}/Patients/{PATIENT_ID}?{QUERY}"),
            headers={"traceparent": CALLER_TRACEPARENT, "tracestate": "vendor=abc"},
        ) as resp:
            assert resp.status == 200
            await resp.read()
    await receiver.wait_for(servers=1, clients=2)

    assert {span.trace_id for span in receiver.spans} == {CALLER_TRACE_ID}
    [server] = receiver.of_kind(Span.SPAN_KIND_SERVER)
    assert server.parent_span_id == CALLER_SPAN_ID
    assert server.name == f"GET {PATIENT_ROUTE}"
    assert server.attributes["http.route"] == PATIENT_ROUTE
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["http.response.status_code"] == 200
    assert "error.type" not in server.attributes
    assert [name for name, _ in server.events] == ["retry"]
    assert server.events[0][1]["reason"] == "status_503"

    first, second = sorted(receiver.of_kind(Span.SPAN_KIND_CLIENT), key=_resend_count)
    for attempt in (first, second):
        assert attempt.parent_span_id == server.span_id
        assert attempt.attributes["server.address"] == "127.0.0.1"
        assert attempt.attributes["server.port"] == upstream.server.port  # type: ignore[union-attr]
        assert attempt.attributes["url.scheme"] == "http"
        assert attempt.attributes["url.template"] == PATIENT_ROUTE
    assert "http.request.resend_count" not in first.attributes
    assert first.attributes["http.response.status_code"] == 503
    assert first.attributes["error.type"] == "503"
    assert first.status_code == 2  # STATUS_CODE_ERROR
    assert second.attributes["http.request.resend_count"] == 1
    assert second.attributes["http.response.status_code"] == 200

    # EXACT got each attempt's own context, not the caller's, and the trace's tracestate.
    sent = [seen.header("traceparent") for seen in upstream.seen]
    assert [_parent_of(value) for value in sent] == [
        (CALLER_TRACE_ID, first.span_id),
        (CALLER_TRACE_ID, second.span_id),
    ]
    assert [seen.header("tracestate") for seen in upstream.seen] == ["vendor=abc"] * 2

    # Nothing that could identify a patient or a practice left in a span.
    _assert_nothing_identifying(receiver)

    [line] = [r for r in caplog.records if r.name == "exact_gateway.access"]
    assert line.fields["trace_id"] == CALLER_TRACE_ID  # type: ignore[attr-defined]
    assert receiver.resources[0]["service.name"] == "exact-gateway"
    assert receiver.resources[0]["deployment.environment.name"] == "test"


def _resend_count(span: Exported) -> int:
    return int(span.attributes.get("http.request.resend_count", 0))


def _assert_nothing_identifying(receiver: OtlpReceiver) -> None:
    raw = b"".join(receiver.raw)
    assert raw, "nothing was exported"
    # (A lone "?" byte is no evidence in binary protobuf; the query's parts are.)
    for needle in (QUERY, "surname=", "Smith", "1961-04-02", PATIENT_ID, PRACTICE):
        assert needle.encode() not in raw, needle
        assert needle.lower().encode() not in raw.lower(), needle
    for span in receiver.spans:
        texts = [span.name, *map(str, span.attributes.values())]
        texts += [str(value) for _, attributes in span.events for value in attributes.values()]
        for text in texts:
            assert PATIENT_ID not in text
            assert PRACTICE not in text
            assert "Smith" not in text
            assert "?" not in text


@pytest.mark.usefixtures("otel_env")
@pytest.mark.parametrize(
    "traceparent",
    [
        "00-not-a-trace-01",
        f"00-{'0' * 32}-{CALLER_SPAN_ID}-01",  # an all-zero trace id is invalid
        f"ff-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01",  # version ff is forbidden
        CALLER_TRACEPARENT.upper(),  # hex digits are lower case
        CALLER_TRACEPARENT + "-" + "x" * 600,
    ],
    ids=["garbage", "zero-trace-id", "version-ff", "upper-case", "long-tail"],
)
async def test_a_malformed_caller_context_starts_a_new_trace(
    start_gateway: GatewayFactory,
    upstream: ScriptedUpstream,
    receiver: OtlpReceiver,
    traceparent: str,
) -> None:
    """A traceparent that is not W3C's is not continued and never reaches EXACT as sent:
    EXACT gets the gateway's own valid context, and the caller's tracestate goes with the
    caller's context."""
    gateway = await _traced_gateway(start_gateway, upstream)
    headers = {"traceparent": traceparent, "tracestate": "vendor=abc"}
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, "/v1/Subscriptions/active"), headers=headers):
            pass
    await receiver.wait_for(servers=1, clients=1)
    [server] = receiver.of_kind(Span.SPAN_KIND_SERVER)
    [attempt] = receiver.of_kind(Span.SPAN_KIND_CLIENT)
    assert server.trace_id != CALLER_TRACE_ID
    assert server.parent_span_id == ""
    assert _parent_of(upstream.seen[0].header("traceparent")) == (
        server.trace_id,
        attempt.span_id,
    )
    assert upstream.seen[0].header("tracestate") is None


@pytest.mark.usefixtures("otel_env")
async def test_two_traceparents_are_no_context(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, receiver: OtlpReceiver
) -> None:
    """With two traceparent headers neither is the parent: a new trace, one header sent on."""
    gateway = await _traced_gateway(start_gateway, upstream)
    other = f"00-{'a' * 32}-{'b' * 16}-01"
    async with aiohttp.ClientSession() as client:
        headers = [("traceparent", CALLER_TRACEPARENT), ("traceparent", other)]
        async with client.get(proxy_url(gateway, "/v1/Subscriptions/active"), headers=headers):
            pass
    await receiver.wait_for(servers=1, clients=1)
    [server] = receiver.of_kind(Span.SPAN_KIND_SERVER)
    assert server.trace_id not in {CALLER_TRACE_ID, "a" * 32}
    assert len(upstream.seen[0].headers["traceparent"]) == 1


@pytest.mark.usefixtures("otel_env")
async def test_breaker_decisions_are_span_events(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, receiver: OtlpReceiver
) -> None:
    """The attempt that opens a practice's breaker says so on its request's span; the next
    request is refused by it (an event, error.type circuit_open, and no CLIENT span)."""

    async def offline(request: web.Request) -> web.StreamResponse:
        return web.json_response({"message": "practice offline"}, status=503)

    upstream.handler = offline
    gateway = await _traced_gateway(
        start_gateway, upstream, breaker_consecutive_failures=2, retry_max_attempts=2
    )
    async with aiohttp.ClientSession() as client:
        for _ in range(2):
            async with client.get(proxy_url(gateway, f"/v1/Practices/{PRACTICE}")) as resp:
                await resp.read()
        assert resp.headers["X-Gateway-Error"] == "circuit_open"
    await receiver.wait_for(servers=2, clients=2)
    assert len(receiver.of_kind(Span.SPAN_KIND_CLIENT)) == 2
    refused, opened = sorted(
        receiver.of_kind(Span.SPAN_KIND_SERVER),
        key=lambda s: s.attributes.get("error.type") != "circuit_open",
    )
    events = dict(opened.events)
    assert list(events) == ["retry", "breaker.opened"]
    assert events["breaker.opened"]["exact_gateway.breaker"] == "practice"
    assert events["breaker.opened"]["error.type"] == "circuit_open"
    assert opened.attributes["http.response.status_code"] == 503
    assert refused.attributes["error.type"] == "circuit_open"
    assert refused.status_code == 2
    [(name, attributes)] = refused.events
    assert name == "breaker.refused"
    assert attributes["exact_gateway.breaker"] == "practice"
    assert attributes["exact_gateway.retry_after_s"] > 0
    _assert_nothing_identifying(receiver)


@pytest.mark.usefixtures("otel_env")
async def test_a_token_wait_that_fails_is_span_events(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, receiver: OtlpReceiver
) -> None:
    """With no token to be had, the request's span shows the wait and why it ended."""
    upstream.refuse_credentials = True
    gateway = await _traced_gateway(start_gateway, upstream)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, "/v1/Subscriptions/active")) as resp:
            assert resp.headers["X-Gateway-Error"] == "token_unavailable"
    await receiver.wait_for(servers=1, clients=0)
    [server] = receiver.of_kind(Span.SPAN_KIND_SERVER)
    assert [name for name, _ in server.events] == ["token.wait", "token.unavailable"]
    assert server.events[1][1] == {"error.type": "token_unavailable"}
    assert server.attributes["error.type"] == "token_unavailable"
    assert receiver.of_kind(Span.SPAN_KIND_CLIENT) == []
    # The secret and the credentials never reach a span.
    assert b"s3cr3t" not in b"".join(receiver.raw)


@pytest.mark.usefixtures("otel_env")
async def test_spans_still_queued_are_flushed_when_the_gateway_stops(
    start_gateway: GatewayFactory,
    upstream: ScriptedUpstream,
    receiver: OtlpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shutdown exports what the batch processor still holds (a long batch delay here)."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    gateway = await _traced_gateway(start_gateway, upstream)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, "/v1/Subscriptions/active")) as resp:
            assert resp.status == 200
    assert receiver.spans == []
    await gateway.shutdown()
    assert len(receiver.of_kind(Span.SPAN_KIND_SERVER)) == 1


async def test_tracing_off_passes_the_caller_context_through_and_loads_no_sdk() -> None:
    """No OTEL_* variable: no span, the caller's traceparent untouched (tests/integration),
    and not one OpenTelemetry module imported by the whole gateway."""
    script = (
        "import sys, gateway.app, gateway.cli, gateway.proxy\n"
        "from gateway.settings import load_tracing_settings\n"
        "from gateway.tracing import start_tracing\n"
        "tracing = start_tracing(load_tracing_settings(), 'http://127.0.0.1:1')\n"
        "assert not tracing.enabled\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_asking_for_tracing_without_the_sdk_fails_the_start_saying_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_TRACES_EXPORTER=otlp without the otel extra is a configuration error naming it."""
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    monkeypatch.delitem(sys.modules, "gateway.tracing.sdk", raising=False)
    with pytest.raises(ConfigError, match=r"exact-gateway\[otel\]"):
        start_tracing(TracingSettings(traces_exporter="otlp"), "http://127.0.0.1:1")


async def test_a_collector_that_is_down_changes_nothing_for_callers(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spans that cannot be exported are dropped by the SDK's thread: requests still succeed
    with the W3C context sent on, and the gateway still stops (after the exporter's time-out)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    gateway = await _traced_gateway(start_gateway, upstream)
    async with aiohttp.ClientSession() as client:
        for _ in range(5):
            async with client.get(
                proxy_url(gateway, "/v1/Subscriptions/active"),
                headers={"traceparent": CALLER_TRACEPARENT},
            ) as resp:
                assert resp.status == 200
    assert all(
        _parent_of(seen.header("traceparent"))[0] == CALLER_TRACE_ID for seen in upstream.seen
    )
    await gateway.shutdown()
    assert gateway.draining
