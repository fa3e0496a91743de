"""The request path: guard the target, attach the token, forward, stream back, observe.

One handler serves every request on the proxy port (aiohttp's low-level server, so no router
sits in front of it: ``CONNECT`` and ``*`` targets reach the guard instead of a 404). Bodies
stream both ways; nothing is buffered but aiohttp's own read buffers, so a 50 MB answer costs
a few hundred kilobytes of memory. Errors the gateway produces itself are problem+json with
``X-Gateway-Error``; answers from EXACT, errors included, pass through untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.routes import OTHER_ROUTE, Target, method_label, parse_target
from gateway.tokens import TokenSource
from gateway.upstream import Upstream, request_headers, response_headers

access_log = logging.getLogger("exact_gateway.access")
log = logging.getLogger("exact_gateway.proxy")
# nginx's convention for "the caller closed the connection before the answer".
CLIENT_CLOSED_REQUEST = 499

# A caller's request id is reused only when it is short and plain, so it cannot forge log
# lines or smuggle data into upstream headers.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_for(supplied: str | None) -> str:
    if supplied is not None and _REQUEST_ID.fullmatch(supplied):
        return supplied
    return uuid.uuid4().hex


def problem_response(error: GatewayError, request_id: str) -> web.Response:
    headers = {
        "X-Gateway-Error": error.reason,
        "X-Request-ID": request_id,
        "Cache-Control": "no-store",
    }
    if error.retry_after_header is not None:
        headers["Retry-After"] = error.retry_after_header
    return web.Response(
        status=error.status,
        body=json.dumps(error.problem(request_id)).encode(),
        content_type="application/problem+json",
        headers=headers,
    )


@dataclass(slots=True)
class Exchange:
    """What one caller request has been through so far: the access log line's fields."""

    request_id: str
    method: str
    route: str = OTHER_ROUTE
    practice_id: str | None = None
    status: int = 500
    attempts: int = 0
    error: str | None = None


class Proxy:
    """The proxy port's single request handler."""

    def __init__(self, upstream: Upstream, tokens: TokenSource, metrics: Metrics) -> None:
        self._upstream = upstream
        self._tokens = tokens
        self._metrics = metrics
        self.inflight = 0

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        exchange = Exchange(
            request_id_for(request.headers.get("X-Request-ID")), method_label(request.method)
        )
        self.inflight += 1
        self._metrics.inflight.inc()
        try:
            target = parse_target(request.method, request.raw_path)
            exchange.route, exchange.practice_id = target.route, target.practice_id
            response = await self._forward(request, target, exchange)
            if exchange.status != CLIENT_CLOSED_REQUEST:
                exchange.status = response.status
            return response
        except GatewayError as error:
            exchange.error, exchange.status = error.reason, error.status
            if error.practice_id is None:
                error.practice_id = exchange.practice_id
            return problem_response(error, exchange.request_id)
        except asyncio.CancelledError:
            exchange.status = CLIENT_CLOSED_REQUEST
            raise
        except Exception as exc:
            # A bug of ours must still answer in the documented format and be visible, but
            # the message of a foreign exception may quote a URL, so only its type is logged.
            log.exception("unexpected error", extra={"fields": {"event": "internal_error"}})
            internal = GatewayError(f"unexpected gateway error ({type(exc).__name__})")
            exchange.error, exchange.status = internal.reason, internal.status
            return problem_response(internal, exchange.request_id)
        finally:
            self.inflight -= 1
            self._metrics.inflight.dec()
            self._observe(exchange, time.perf_counter() - started)

    async def _forward(
        self, request: web.BaseRequest, target: Target, exchange: Exchange
    ) -> web.StreamResponse:
        token = await self._tokens.get()
        headers = request_headers(request.headers, token, exchange.request_id)
        body = request.content if request.body_exists else None
        sent = time.perf_counter()
        exchange.attempts += 1
        try:
            upstream = await self._upstream.send(request.method, target.path, headers, body)
        except GatewayError as error:
            self._observe_attempt(target.route, error.reason, sent)
            raise
        self._observe_attempt(target.route, str(upstream.status), sent)
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=response_headers(upstream.headers, exchange.request_id),
        )
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:
            # The caller hung up mid-body (aiohttp raises this on our write): drop the
            # half-read upstream connection rather than return it to the pool.
            upstream.close()
            exchange.error = "client_disconnected"
            response.force_close()
            exchange.status = CLIENT_CLOSED_REQUEST
            return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            # EXACT failed mid-body: the status line is already sent, so the only honest
            # signal left is to cut the connection and let the caller see a short body.
            upstream.close()
            exchange.error = f"stream_aborted:{type(exc).__name__}"
            if request.transport is not None:
                request.transport.close()
            return response
        except BaseException:
            # The caller went away (or we are cancelled): drop the half-read upstream
            # connection rather than return it to the pool.
            upstream.close()
            raise
        upstream.release()
        return response

    def _observe_attempt(self, route: str, outcome: str, sent: float) -> None:
        self._metrics.upstream_attempts.labels(route, outcome).inc()
        self._metrics.upstream_attempt_duration.labels(route).observe(time.perf_counter() - sent)

    def _observe(self, exchange: Exchange, elapsed: float) -> None:
        code = str(exchange.status)
        self._metrics.requests.labels(exchange.method, exchange.route, code).inc()
        self._metrics.request_duration.labels(exchange.method, exchange.route, code).observe(
            elapsed
        )
        access_log.info(
            "request",
            extra={
                "fields": {
                    "event": "request",
                    "method": exchange.method,
                    "route": exchange.route,
                    "status": exchange.status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "attempts": exchange.attempts,
                    "practice_id": exchange.practice_id,
                    "request_id": exchange.request_id,
                    "error": exchange.error,
                }
            },
        )
