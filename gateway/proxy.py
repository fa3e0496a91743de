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
from aiohttp import StreamReader, web

from gateway.errors import CallerGone, GatewayError
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
    deadline: float  # perf_counter() time by which the caller must have an answer
    route: str = OTHER_ROUTE
    practice_id: str | None = None
    status: int = 500
    attempts: int = 0
    error: str | None = None


class Proxy:
    """The proxy port's single request handler."""

    def __init__(
        self,
        upstream: Upstream,
        tokens: TokenSource,
        metrics: Metrics,
        *,
        replay_buffer_bytes: int = 1024 * 1024,
        deadline: float = 60.0,
    ) -> None:
        self._deadline = deadline
        self._upstream = upstream
        self._tokens = tokens
        self._metrics = metrics
        self._replay_buffer_bytes = replay_buffer_bytes
        self.inflight = 0

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        exchange = Exchange(
            request_id_for(request.headers.get("X-Request-ID")),
            method_label(request.method),
            deadline=started + self._deadline,
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
        except CallerGone:
            exchange.status, exchange.error = CLIENT_CLOSED_REQUEST, "client_disconnected"
            return web.Response(status=CLIENT_CLOSED_REQUEST)  # nobody is left to read it
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
        body, replayable = await self._body(request)
        token = await self._tokens.get(wait=exchange.deadline - time.perf_counter())
        upstream = await self._attempt(request, target, exchange, token, body)
        if upstream.status == 401:
            # EXACT refused the token (revoked, or expired in a way we could not see). Get a
            # new one once per token generation and replay if the body allows; otherwise the
            # 401 goes back unchanged.
            try:
                replacement = await self._tokens.replace(token)
            except GatewayError:
                upstream.close()
                raise
            if replacement is not None and replayable:
                upstream.close()
                upstream = await self._attempt(request, target, exchange, replacement, body)
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

    async def _body(self, request: web.BaseRequest) -> tuple[bytes | StreamReader | None, bool]:
        """The body to send, and whether it can be sent again.

        Bodies of known length up to REPLAY_BUFFER_BYTES are read first so that a replay is
        possible; larger or chunked bodies stream straight through and are never replayed.
        """
        if not request.body_exists:
            return None, True
        length = request.content_length
        if length is not None and length <= self._replay_buffer_bytes:
            try:
                return await request.read(), True
            except (aiohttp.ClientError, ConnectionError) as exc:
                raise CallerGone from exc
        return request.content, False

    async def _attempt(
        self,
        request: web.BaseRequest,
        target: Target,
        exchange: Exchange,
        token: str,
        body: bytes | StreamReader | None,
    ) -> aiohttp.ClientResponse:
        headers = request_headers(request.headers, token, exchange.request_id)
        sent = time.perf_counter()
        exchange.attempts += 1
        try:
            upstream = await self._upstream.send(request.method, target.path, headers, body)
        except GatewayError as error:
            if isinstance(body, StreamReader) and body.exception() is not None:
                # The send failed because the caller's body broke off, not because of EXACT.
                raise CallerGone from error
            self._observe_attempt(target.route, error.reason, sent)
            raise
        self._observe_attempt(target.route, str(upstream.status), sent)
        return upstream

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
