"""The request path over real sockets: forwarding, header hygiene, refusals, errors."""

from __future__ import annotations

import asyncio
import gzip
import json

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.app import Gateway
from tests.fakes import GatewayFactory, ScriptedUpstream, gateway_settings, proxy_url


async def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes (for request forms an HTTP client refuses to produce) and parse."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


async def test_forwards_path_query_and_body_byte_for_byte(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """Method, raw path, query (encoding untouched) and body reach EXACT exactly as sent."""
    path = "/v1/Practices/UKTEST1/Appointments/?from=2024-05-01T00%3A00%3A00%2B0000&x=%7e+a"
    async with aiohttp.ClientSession() as client:
        url = URL(proxy_url(gateway, path), encoded=True)
        async with client.post(url, data=b'{"a": 1}', headers={"X-Custom": "kept"}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"ok": True}
    (seen,) = upstream.seen
    assert seen.method == "POST"
    assert seen.raw_path == path
    assert seen.body == b'{"a": 1}'
    assert seen.header("x-custom") == "kept"


async def test_caller_authorization_is_replaced_by_gateway_token(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """A caller's bearer never reaches EXACT; the gateway's own token does."""
    async with aiohttp.ClientSession() as client:
        async with client.get(
            proxy_url(gateway, "/v1/Subscriptions/active"),
            headers={"Authorization": "Bearer x", "Proxy-Authorization": "Basic y"},
        ) as resp:
            assert resp.status == 200
    (seen,) = upstream.seen
    assert seen.headers["authorization"] == [f"Bearer {upstream.tokens_issued[0]}"]
    assert "proxy-authorization" not in seen.headers


async def test_hop_by_hop_and_routing_headers_are_stripped(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """Connection-named, hop-by-hop and host-rewriting headers never cross the gateway."""

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(
            text="x",
            headers={
                "Connection": "keep-alive, X-Upstream-Hop",
                "X-Upstream-Hop": "1",
                "X-Upstream-Kept": "2",
                "Keep-Alive": "timeout=5",
            },
        )

    upstream.handler = answer
    async with aiohttp.ClientSession() as client:
        async with client.get(
            proxy_url(gateway, "/v1/Practices/UKTEST1/details"),
            headers={
                "Connection": "keep-alive, X-Caller-Hop",
                "X-Caller-Hop": "secret",
                "TE": "trailers",
                "X-Original-URL": "/admin",
                "X-Forwarded-Host": "evil.example",
                "X-HTTP-Method-Override": "DELETE",
                "Host": "evil.example",
            },
        ) as resp:
            assert resp.headers.get("X-Upstream-Kept") == "2"
            assert "X-Upstream-Hop" not in resp.headers
            assert "Keep-Alive" not in resp.headers
    (seen,) = upstream.seen
    for name in (
        "x-caller-hop",
        "te",
        "x-original-url",
        "x-forwarded-host",
        "x-http-method-override",
    ):
        assert name not in seen.headers, name
    assert seen.header("host") == upstream.url.removeprefix("http://")


async def test_api_version_added_only_when_missing(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """x-api-version: 1.0 is added by default and a caller's own value is kept."""
    async with aiohttp.ClientSession() as client:
        await (await client.get(proxy_url(gateway, "/v1/Subscriptions/active"))).read()
        await (
            await client.get(
                proxy_url(gateway, "/v1/Subscriptions/active"), headers={"x-api-version": "2.0"}
            )
        ).read()
    assert upstream.seen[0].headers["x-api-version"] == ["1.0"]
    assert upstream.seen[1].headers["x-api-version"] == ["2.0"]


async def test_request_id_propagated_or_generated(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """X-Request-ID: the caller's plain id is reused; a missing or unsafe one is replaced."""
    async with aiohttp.ClientSession() as client:
        async with client.get(
            proxy_url(gateway, "/v1/Subscriptions/active"), headers={"X-Request-ID": "abc-123"}
        ) as resp:
            assert resp.headers["X-Request-ID"] == "abc-123"
        async with client.get(proxy_url(gateway, "/v1/Subscriptions/active")) as resp:
            generated = resp.headers["X-Request-ID"]
        async with client.get(
            proxy_url(gateway, "/v1/Subscriptions/active"),
            headers={"X-Request-ID": "bad id with spaces"},
        ) as resp:
            replaced = resp.headers["X-Request-ID"]
    assert upstream.seen[0].header("x-request-id") == "abc-123"
    assert upstream.seen[1].header("x-request-id") == generated
    assert len(generated) == 32
    assert replaced != "bad id with spaces"
    assert upstream.seen[2].header("x-request-id") == replaced


async def test_traceparent_passes_through(gateway: Gateway, upstream: ScriptedUpstream) -> None:
    """W3C trace context is an end-to-end header and reaches EXACT unchanged."""
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with aiohttp.ClientSession() as client:
        await (
            await client.get(
                proxy_url(gateway, "/v1/Subscriptions/active"), headers={"traceparent": trace}
            )
        ).read()
    assert upstream.seen[0].header("traceparent") == trace


async def test_upstream_errors_pass_through_untouched(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """EXACT's own error answers (here a 502 with a plain body) are not rewritten."""

    async def failing(request: web.Request) -> web.StreamResponse:
        return web.Response(status=502, text="practice server failed", headers={"X-E": "1"})

    upstream.handler = failing
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, "/v1/Practices/UKERROR1/details")) as resp:
            assert resp.status == 502
            assert await resp.text() == "practice server failed"
            assert resp.headers["X-E"] == "1"
            assert "X-Gateway-Error" not in resp.headers


async def test_compressed_bodies_pass_without_decompression(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """Bytes pass as EXACT sent them: no Accept-Encoding added, gzip not unpacked."""
    packed = gzip.compress(b'{"big": true}')

    async def gz(request: web.Request) -> web.StreamResponse:
        return web.Response(body=packed, headers={"Content-Encoding": "gzip"})

    upstream.handler = gz
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        async with client.get(
            proxy_url(gateway, "/v1/Practices/UKTEST1/details"),
            headers={"Accept-Encoding": "gzip"},
        ) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            assert await resp.read() == packed
        await (
            await client.get(
                proxy_url(gateway, "/v1/Subscriptions/active"),
                skip_auto_headers=["Accept-Encoding"],
            )
        ).read()
    assert upstream.seen[0].header("accept-encoding") == "gzip"
    assert "accept-encoding" not in upstream.seen[1].headers


async def test_redirects_are_returned_not_followed(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """A 3xx from EXACT goes back to the caller; the gateway never follows it elsewhere."""

    async def redirect(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": "http://elsewhere.invalid/"})

    upstream.handler = redirect
    async with aiohttp.ClientSession() as client:
        async with client.get(
            proxy_url(gateway, "/v1/Subscriptions/active"), allow_redirects=False
        ) as resp:
            assert resp.status == 302
    assert len(upstream.seen) == 1


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET http://example.com/ HTTP/1.1",
        b"GET http://127.0.0.1/v1/Subscriptions/active HTTP/1.1",
        b"CONNECT example.com:443 HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
        b"GET /v1/Practices/../x HTTP/1.1",
        b"GET /v1/Practices/UKTEST1/%2e%2e/%2E%2E/Subscriptions/active HTTP/1.1",
        b"GET /v1/Practices/UKTEST1/..%5cx HTTP/1.1",
        b"GET /v1/Practices/UK%2fTEST1/details HTTP/1.1",
        b"GET /v1/practices/-bad/details HTTP/1.1",
        b"GET /v1/Practices//details HTTP/1.1",
    ],
)
async def test_refused_targets_get_400_and_nothing_is_forwarded(
    gateway: Gateway, upstream: ScriptedUpstream, request_line: bytes
) -> None:
    """Absolute-form, CONNECT, asterisk, dot-segments and bad practice ids: 400, no forward."""
    status, headers, body = await raw_exchange(
        gateway.proxy_port, request_line + b"\r\nHost: example.com\r\nConnection: close\r\n\r\n"
    )
    assert status == 400
    assert headers["content-type"].startswith("application/problem+json")
    assert headers["x-gateway-error"] == "bad_request"
    problem = json.loads(body)
    assert problem["reason"] == "bad_request"
    assert problem["status"] == 400
    assert problem["request_id"] == headers["x-request-id"]
    assert upstream.seen == []


async def test_unreachable_upstream_is_a_clear_502(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """EXACT refusing connections becomes 502 upstream_unreachable, problem+json."""
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    closed_port = sock.getsockname()[1]
    sock.close()
    gateway = await start_gateway(
        gateway_settings(
            f"http://127.0.0.1:{closed_port}", token_url=f"{upstream.url}/connect/token"
        )
    )
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, "/v1/Practices/UKTEST1/details")) as resp:
            assert resp.status == 502
            assert resp.headers["X-Gateway-Error"] == "upstream_unreachable"
            problem = await resp.json(content_type=None)
    assert problem["practice_id"] == "UKTEST1"
    assert problem["reason"] == "upstream_unreachable"


async def test_slow_upstream_hits_attempt_timeout(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """No answer within the attempt time-out: 504 upstream_timeout, not a hang."""

    async def stall(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response()

    upstream.handler = stall
    gateway = await start_gateway(gateway_settings(upstream.url, attempt_timeout_seconds=0.3))
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, "/v1/Practices/UKSLOW1/details")) as resp:
            assert resp.status == 504
            assert resp.headers["X-Gateway-Error"] == "upstream_timeout"


async def test_token_endpoint_down_gives_503_token_unavailable(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """No token can be had: 503 token_unavailable with Retry-After, never a bare 401."""
    gateway = await start_gateway(
        gateway_settings(upstream.url, token_url="http://127.0.0.1:9/connect/token")
    )
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, "/v1/Subscriptions/active")) as resp:
            assert resp.status == 503
            assert resp.headers["X-Gateway-Error"] == "token_unavailable"
            assert int(resp.headers["Retry-After"]) > 0
    assert upstream.seen == []


async def test_concurrent_cold_start_makes_one_token_request(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """Many requests arriving with no token share one token request."""
    async with aiohttp.ClientSession() as client:

        async def one() -> int:
            async with client.get(proxy_url(gateway, "/v1/Subscriptions/active")) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one() for _ in range(50)))
    assert set(statuses) == {200}
    assert len(upstream.tokens_issued) == 1


async def test_upstream_failing_mid_body_cuts_the_caller_connection(
    gateway: Gateway, upstream: ScriptedUpstream
) -> None:
    """A body EXACT breaks off is not passed on as if complete: the caller sees the cut."""

    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 100_000
        await response.prepare(request)
        await response.write(b"x" * 1000)
        assert request.transport is not None
        request.transport.close()
        return response

    upstream.handler = broken
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, "/v1/Practices/UKTEST1/details")) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        upstream.handler = lambda request: _json({"after": True})
        async with client.get(proxy_url(gateway, "/v1/Practices/UKTEST1/details")) as resp:
            assert await resp.json() == {"after": True}


async def _json(body: object) -> web.StreamResponse:
    return web.json_response(body)


async def test_caller_leaving_mid_stream_leaves_gateway_healthy(
    gateway: Gateway, upstream: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller hanging up mid-body is counted as 499, not as a gateway bug; next works."""

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(2000):
            await response.write(b"y" * 65536)
            await asyncio.sleep(0)
        return response

    upstream.handler = endless
    async with aiohttp.ClientSession() as client:
        resp = await client.get(proxy_url(gateway, "/v1/Practices/UKTEST1/Appointments"))
        await resp.content.read(100_000)
        resp.close()
    upstream.handler = lambda request: _json({"ok": 2})
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(gateway, "/v1/Practices/UKTEST1/details")) as resp:
            assert await resp.json() == {"ok": 2}
    for _ in range(50):
        if gateway.inflight == 0:
            break
        await asyncio.sleep(0.05)
    assert gateway.inflight == 0
    assert not [r for r in caplog.records if r.getMessage() == "unexpected error"]
    hung_up = gateway.metrics.registry.get_sample_value(
        "exact_gateway_requests_total",
        {"method": "GET", "route": "/v1/Practices/{practiceId}/Appointments", "status_code": "499"},
    )
    assert hung_up == 1


@pytest.mark.parametrize("length", [100, 5_000_000], ids=["buffered", "streamed"])
async def test_caller_hanging_up_mid_upload_is_a_499_not_an_exact_failure(
    gateway: Gateway, upstream: ScriptedUpstream, caplog: pytest.LogCaptureFixture, length: int
) -> None:
    """A caller that stops sending its body is logged 499 client_disconnected: not a gateway
    bug (500) and not EXACT being unreachable (502), whether the body was buffered or streamed."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", gateway.proxy_port)
    writer.write(
        b"POST /v1/Practices/UKTEST1/Patients/x/Contact HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Length: {length}\r\n\r\n".encode()
        + b"0123456789"
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    for _ in range(40):
        lines = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "request"]
        if lines:
            break
        await asyncio.sleep(0.05)
    (line,) = lines
    assert line.fields["status"] == 499  # type: ignore[attr-defined]
    assert line.fields["error"] == "client_disconnected"  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.getMessage() == "unexpected error"]
