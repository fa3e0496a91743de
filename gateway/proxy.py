"""The request path: guard, limit, admit, attach the token, attempt (and retry), stream back.

One handler serves every request on the proxy port (aiohttp's low-level server, so no router
sits in front of it: ``CONNECT`` and ``*`` targets reach the guard instead of a 404). For each
request, in order:

1. the target guard (:mod:`gateway.routes`) and the caller's ``X-Gateway-Timeout``;
2. the concurrency limits (:mod:`gateway.resilience.bulkhead`), held for the whole request;
3. for each attempt: the breakers (:mod:`gateway.resilience`), the token, one call to EXACT;
   its outcome feeds the breakers; a retryable outcome is retried when the retry policy, the
   deadline and the retry budget all allow it (:mod:`gateway.resilience.retry`,
   :mod:`gateway.resilience.budget`);
4. the response streams back. Nothing is buffered but aiohttp's read buffers and, when a
   replay is possible, a small request body, so a 50 MB answer costs a few hundred kilobytes.

Errors the gateway produces itself are problem+json with ``X-Gateway-Error``; answers from
EXACT, errors included, pass through untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import StreamReader, web

from gateway.caller import cut_off, expect_continue, render_problem
from gateway.errors import (
    BadRequest,
    CallerGone,
    CircuitOpen,
    DeadlineExceeded,
    GatewayError,
    RequestTimeout,
    UpstreamCircuitOpen,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.header_policy import check_values
from gateway.history import History
from gateway.idempotency import (
    KEYED_METHODS,
    Claim,
    IdempotencyKeys,
    StoredAnswer,
    fingerprint,
    valid_key,
)
from gateway.metrics import Metrics
from gateway.policies import ProxyPolicy
from gateway.practices.watch import PracticeWatch
from gateway.resilience import Resilience, Ticket
from gateway.resilience.retry import decide, parse_retry_after, retry_reason
from gateway.routes import OTHER_ROUTE, Target, method_label, parse_target
from gateway.tokens import TokenSource
from gateway.tracing import NO_TRACE, RequestSpan, Tracing
from gateway.upstream import Upstream, forwarded_value, request_headers, response_headers

access_log = logging.getLogger("exact_gateway.access")
log = logging.getLogger("exact_gateway.proxy")
# nginx's convention for "the caller closed the connection before the answer".
CLIENT_CLOSED_REQUEST = 499

# A caller's request id is reused only when it is short and plain, so it cannot forge log
# lines or smuggle data into upstream headers.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def deadline_for(header: str | None, default: float) -> float:
    """Seconds the request may take: the setting, or less if the caller asks for less."""
    if header is None:
        return default
    try:
        asked = float(header)
    except ValueError:
        asked = float("nan")
    if not asked > 0:  # also refuses nan and inf
        raise BadRequest("X-Gateway-Timeout must be a positive number of seconds")
    return min(asked, default)


def request_id_for(supplied: str | None) -> str:
    if supplied is not None and _REQUEST_ID.fullmatch(supplied):
        return supplied
    return uuid.uuid4().hex


# Statuses of EXACT that prove the request never reached the practice: the relay refused it
# (401) or could not reach the practice's server (503).
NOT_DELIVERED_STATUSES = frozenset({401, 503})
# A failed answer kept across a retry's wait, in case the retry is refused (bounded).
RETAINED_ANSWER_BYTES = 65536


def stored_response(answer: StoredAnswer, request_id: str) -> web.Response:
    """An answer kept from earlier (an idempotent replay, or a retry that was refused)."""
    response = web.Response(status=answer.status, reason=answer.reason, body=answer.body or b"")
    for name, value in answer.headers:
        if name.lower() not in {"content-length", "x-request-id"}:
            response.headers.add(name, value)
    response.headers["X-Request-ID"] = request_id
    return response


def problem_response(error: GatewayError, request_id: str) -> web.Response:
    return render_problem(error, request_id)


class _CallerBody:
    """The caller's streamed body, read chunk by chunk as it goes upstream.

    It knows whether the attempt is waiting on the caller (``waiting_for_caller``: the
    caller's slowness, never the practice's) or on EXACT (back-pressure), and whether the
    caller's side broke off (``broken``).
    """

    __slots__ = ("_reader", "broken", "waiting_for_caller")

    def failure(self) -> BaseException | None:
        """Why the caller's side broke off (the listener's time-out, a reset), if it did."""
        cause = self._reader.exception()
        if cause is None and self.broken:
            return CallerGone()
        return cause

    def __init__(self, reader: StreamReader) -> None:
        self._reader = reader
        self.waiting_for_caller = False
        self.broken = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            self.waiting_for_caller = True
            try:
                chunk = await self._reader.readany()
            except Exception:
                self.broken = True
                raise
            finally:
                self.waiting_for_caller = False
            if not chunk:
                return
            yield chunk


async def _retain(upstream: aiohttp.ClientResponse) -> StoredAnswer | None:
    """Keep a small failed answer across a retry's wait (then its connection is free)."""
    try:
        length = upstream.content_length
        if length is not None and length > RETAINED_ANSWER_BYTES:
            return None
        body = bytearray()
        # read(n) returns what has arrived, not necessarily n bytes: read until the end.
        while chunk := await upstream.content.read(RETAINED_ANSWER_BYTES + 1 - len(body)):
            body += chunk
            if len(body) > RETAINED_ANSWER_BYTES:
                return None
        return StoredAnswer(
            upstream.status, upstream.reason or "", tuple(upstream.headers.items()), bytes(body)
        )
    except (aiohttp.ClientError, TimeoutError):
        return None
    finally:
        upstream.close()


def _problem_answer(error: GatewayError, exchange: Exchange) -> StoredAnswer:
    if error.practice_id is None:
        error.practice_id = exchange.practice_id
    response = problem_response(error, exchange.request_id)
    assert isinstance(response.body, bytes)  # noqa: S101 - built from bytes just above
    return StoredAnswer(
        response.status, response.reason, tuple(response.headers.items()), response.body
    )


@dataclass(slots=True)
class Exchange:
    """What one caller request has been through so far: the access log line's fields."""

    request_id: str
    method: str
    deadline: float = 0.0  # resilience-clock time by which the caller must have an answer
    route: str = OTHER_ROUTE
    practice_id: str | None = None
    status: int = 500
    attempts: int = 0
    error: str | None = None
    replayable: bool = True  # the body (if any) is buffered and can be sent again
    keyed: bool = False  # an Idempotency-Key goes upstream (decided from the headers sent)
    # Some attempt may have reached the practice (so a keyed POST must not be sent again).
    maybe_delivered: bool = False
    answer: StoredAnswer | None = None  # what the caller got, kept for an Idempotency-Key
    collect: bool = False  # keep the streamed body (up to a bound) for that record
    trace: RequestSpan = NO_TRACE  # the SERVER span (gateway/tracing: a no-op when off)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt's outcome: EXACT's response or the gateway's error, and its ticket."""

    upstream: aiohttp.ClientResponse | None
    error: GatewayError | None
    ticket: Ticket


class Proxy:
    """The proxy port's single request handler."""

    def __init__(
        self,
        upstream: Upstream,
        tokens: TokenSource,
        metrics: Metrics,
        resilience: Resilience,
        policy: ProxyPolicy,
        *,
        history: History,
        idempotency: IdempotencyKeys | None = None,
        practices: PracticeWatch | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._tracing = tracing if tracing is not None else Tracing()
        self._idempotency = idempotency
        self._practices = practices
        self._history = history
        self._upstream = upstream
        self._tokens = tokens
        self._metrics = metrics
        self._resilience = resilience
        # One clock for the whole request path: the one the breakers and deadlines use.
        self._clock = resilience.clock
        self._attempt_timeout = policy.attempt_timeout
        self._deadline = policy.deadline
        self._replay_buffer_bytes = policy.replay_buffer_bytes

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = self._clock.monotonic()
        exchange = Exchange(
            request_id_for(request.headers.get("X-Request-ID")), method_label(request.method)
        )
        exchange.trace = self._tracing.request(request.method, request.headers)
        try:
            target = parse_target(request.method, request.raw_path)
            exchange.route, exchange.practice_id = target.route, target.practice_id
            check_values(request.headers.items())
            exchange.deadline = self._clock.monotonic() + deadline_for(
                request.headers.get("X-Gateway-Timeout"), self._deadline
            )
            if self._practices is not None:  # paused, unsubscribed, too old: answered here
                await self._practices.admit(request.method, target, exchange.deadline)
            body, exchange.replayable = await self._body(request)
            claim = await self._claim(request, target, exchange, body)
            if isinstance(claim, StoredAnswer):
                exchange.status = claim.status
                replay = stored_response(claim, exchange.request_id)
                replay.headers["Idempotent-Replayed"] = "true"
                return replay
            try:
                response = await self._within_limits(request, target, exchange, body)
            finally:
                if claim is not None:
                    self._settle(claim, exchange)
            if exchange.status != CLIENT_CLOSED_REQUEST:
                exchange.status = response.status
            return response
        except GatewayError as error:
            exchange.error, exchange.status = error.reason, error.status
            self._metrics.rejected.labels(error.reason).inc()
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
            log.exception(
                "unexpected error",
                extra={"fields": {"event": "internal_error", "request_id": exchange.request_id}},
            )
            internal = GatewayError(f"unexpected gateway error ({type(exc).__name__})")
            exchange.error, exchange.status = internal.reason, internal.status
            self._metrics.rejected.labels(internal.reason).inc()
            return problem_response(internal, exchange.request_id)
        finally:
            self._observe(exchange, self._clock.monotonic() - started)
            exchange.trace.end(exchange.route, exchange.status, exchange.error)

    async def _claim(
        self,
        request: web.BaseRequest,
        target: Target,
        exchange: Exchange,
        body: bytes | StreamReader | None,
    ) -> Claim | StoredAnswer | None:
        """Take the request's Idempotency-Key, or the answer to replay for it.

        Keyed-ness is read from the headers that will actually be sent: a key that the
        caller's own ``Connection`` header strips is no key.
        """
        key = forwarded_value(request.headers, "Idempotency-Key")
        exchange.keyed = key is not None
        if key is None or self._idempotency is None or request.method not in KEYED_METHODS:
            return None
        buffered = body if isinstance(body, bytes) else None
        print_ = fingerprint(request.method, target.path, buffered, request.content_length)
        claim = await self._idempotency.claim(valid_key(key), print_)
        exchange.collect = isinstance(claim, Claim)
        return claim

    def _settle(self, claim: Claim | StoredAnswer, exchange: Exchange) -> None:
        """Remember the answer of a keyed request that may have reached the practice;
        free the key of one that provably did not."""
        assert self._idempotency is not None  # noqa: S101 - only claimed when there is one
        if not isinstance(claim, Claim):
            return
        if not exchange.maybe_delivered:
            self._idempotency.release(claim)
            return
        answer = exchange.answer
        if answer is None:
            # Cut off (shutdown, cancelled) after sending: the outcome is unknown, and
            # unknown must never mean "send it again".
            problem = UpstreamTimeout(
                "the first request with this Idempotency-Key ended before EXACT answered;"
                " it may have been carried out, so it is not sent again"
            )
            answer = StoredAnswer(
                problem.status,
                "Gateway Timeout",
                (
                    ("Content-Type", "application/problem+json"),
                    ("X-Gateway-Error", problem.reason),
                ),
                json.dumps(problem.problem(exchange.request_id)).encode(),
            )
        self._idempotency.complete(claim, answer)

    async def _within_limits(
        self,
        request: web.BaseRequest,
        target: Target,
        exchange: Exchange,
        body: bytes | StreamReader | None,
    ) -> web.StreamResponse:
        bulkhead = self._resilience.bulkhead
        bulkhead.acquire(target.practice_id)
        try:
            return await self._forward(request, target, exchange, body)
        except GatewayError as error:
            if exchange.collect:
                exchange.answer = _problem_answer(error, exchange)
            raise
        finally:
            bulkhead.release(target.practice_id)

    async def _forward(
        self,
        request: web.BaseRequest,
        target: Target,
        exchange: Exchange,
        caller_body: bytes | StreamReader | None,
    ) -> web.StreamResponse:
        body = _CallerBody(caller_body) if isinstance(caller_body, StreamReader) else caller_body
        patience = exchange.deadline - self._clock.monotonic()
        token = await exchange.trace.token(self._tokens, patience)
        self._resilience.budget.record_request(self._clock.monotonic())
        replayed_401 = False
        retained: StoredAnswer | None = None  # the last failed answer, across a retry's wait
        while True:
            try:
                attempt = await self._attempt(request, target, exchange, token, body)
            except (CircuitOpen, UpstreamCircuitOpen):
                if exchange.attempts == 0:
                    raise  # refused without trying: the breaker is the honest reason
                # A retry refused by a breaker another request opened meanwhile: this caller
                # gets the outcome of its own last attempt, not the breaker's.
                if retained is not None:
                    return stored_response(retained, exchange.request_id)
                raise
            upstream = attempt.upstream
            if upstream is not None and upstream.status == 401 and not replayed_401:
                # EXACT refused the token (revoked, or expired in a way we could not see).
                # A new one once per token generation, and one replay if the body allows.
                replayed_401 = True
                try:
                    replacement = await self._tokens.replace(token)
                except GatewayError:
                    upstream.close()
                    raise
                if replacement is not None and exchange.replayable:
                    upstream.close()
                    token = replacement
                    continue
            wait = self._retry_wait(request, exchange, attempt)
            if wait is None:
                break
            retained = None
            if upstream is not None:
                retained = await _retain(upstream)
            await asyncio.sleep(wait)
        if attempt.error is not None:
            raise attempt.error
        assert upstream is not None  # noqa: S101 - an attempt has a response or an error
        return await self._stream(request, upstream, exchange)

    def _retry_wait(
        self, request: web.BaseRequest, exchange: Exchange, attempt: Attempt
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to answer with this outcome.

        Whatever stops a retry, the caller gets its own last outcome (EXACT's answer, or
        ``upstream_unreachable``/``upstream_timeout``): the reason says what happened to
        this request, and the metric ``retries_skipped_total`` says why it was not retried.
        """
        upstream, error = attempt.upstream, attempt.error
        resilience = self._resilience
        reason = retry_reason(upstream.status if upstream is not None else None, error)
        if reason is None:
            return None
        if (opened := resilience.opened_by(attempt.ticket)) is not None:
            # This attempt opened a breaker: retrying into it would only be refused.
            exchange.trace.breaker_opened(opened)
            self._metrics.retries_skipped.labels("breaker").inc()
            return None
        why = "body_streamed"
        if exchange.replayable:
            hint = upstream.headers.get("Retry-After") if upstream is not None else None
            verdict = decide(
                resilience.retry,
                attempt=exchange.attempts,
                reason=reason,
                method=request.method,
                has_idempotency_key=exchange.keyed,
                retry_after=parse_retry_after(hint, self._clock.wall()),
                remaining=exchange.deadline - self._clock.monotonic(),
                rng=resilience.rng,
            )
            why = verdict.why
            if verdict.retry:
                if resilience.budget.try_spend(self._clock.monotonic()):
                    self._metrics.retries.labels(reason).inc()
                    exchange.trace.event("retry", {"reason": reason, "wait_s": verdict.wait})
                    return verdict.wait
                why = "budget"
        self._metrics.retries_skipped.labels(why).inc()
        exchange.trace.event("retry.skipped", {"reason": why})
        if error is not None and why == "budget":
            error.detail += " (not retried: retries across all requests are at their budget)"
        return None

    async def _attempt(
        self,
        request: web.BaseRequest,
        target: Target,
        exchange: Exchange,
        token: str,
        body: bytes | _CallerBody | None,
    ) -> Attempt:
        """One call to EXACT, cleared with the breakers first and reported to them after."""
        remaining = exchange.deadline - self._clock.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("the request's deadline passed before EXACT answered")
        ticket = exchange.trace.admit(self._resilience, target.practice_id)
        limit = min(self._attempt_timeout, remaining)
        headers = request_headers(request.headers, token, exchange.request_id)
        span = exchange.trace.attempt(request.method, target.route, exchange.attempts)
        span.inject(headers)
        sent = self._clock.monotonic()
        exchange.attempts += 1
        try:
            upstream = await span.sent(
                self._upstream.send(request.method, target.path, headers, body, limit=limit)
            )
        except UpstreamTimeout as error:
            if isinstance(body, _CallerBody) and body.waiting_for_caller:
                # Stuck on the caller's own upload: its slowness, not the practice's.
                self._resilience.abandon(ticket)
                raise RequestTimeout(
                    "the request body stopped arriving before it was complete"
                ) from None
            if not error.connecting:
                exchange.maybe_delivered = True
            if not error.connecting and limit < self._attempt_timeout:
                # Cut short by the caller's deadline, not by the practice's slowness.
                self._resilience.abandon(ticket)
                self._observe_attempt(target.route, DeadlineExceeded.reason, sent)
                raise DeadlineExceeded(
                    "the request's deadline passed before EXACT answered"
                ) from None
            self._resilience.observe(ticket, None, error)
            self._observe_attempt(target.route, error.reason, sent)
            self._feed(target, None, error, sent)
            return Attempt(None, error, ticket)
        except GatewayError as error:
            if isinstance(body, _CallerBody) and (cause := body.failure()) is not None:
                # The send failed because the caller's body broke off, not because of EXACT.
                self._resilience.abandon(ticket)
                if isinstance(cause, RequestTimeout):
                    raise cause from error
                raise CallerGone from error
            if not isinstance(error, UpstreamUnreachable) or error.sent:
                exchange.maybe_delivered = True
            self._resilience.observe(ticket, None, error)
            self._observe_attempt(target.route, error.reason, sent)
            self._feed(target, None, error, sent)
            return Attempt(None, error, ticket)
        except BaseException:
            exchange.maybe_delivered = True  # cancelled mid-send: assume it may have arrived
            self._resilience.abandon(ticket)
            raise
        if upstream.status not in NOT_DELIVERED_STATUSES:
            exchange.maybe_delivered = True
        self._resilience.observe(ticket, upstream.status, None, upstream.headers.get("Retry-After"))
        self._observe_attempt(target.route, str(upstream.status), sent)
        self._feed(target, upstream.status, None, sent)
        return Attempt(upstream, None, ticket)

    async def _stream(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, exchange: Exchange
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=response_headers(upstream.headers, exchange.request_id),
        )
        kept: bytearray | None = bytearray() if exchange.collect else None
        tap = None
        if self._practices is not None:  # a GetPracticeDetails answer tells the version
            tap = self._practices.tap(
                exchange.method, exchange.route, exchange.practice_id, upstream.status
            )
        limit = self._idempotency.max_response_bytes if self._idempotency is not None else 0
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                if kept is not None:
                    kept += chunk
                    if len(kept) > limit:
                        kept = None  # too large to replay: the record keeps status and headers
                if tap is not None:
                    tap.feed(chunk)
                await response.write(chunk)
            await response.write_eof()
            if tap is not None:
                tap.finish()
        except ConnectionError:
            # The caller hung up mid-body, or stopped reading and the listener cut it off
            # (aiohttp raises this on our write): drop the half-read upstream connection.
            upstream.close()
            slow = cut_off(request)
            exchange.error = slow.reason if slow is not None else "client_disconnected"
            response.force_close()
            exchange.status = CLIENT_CLOSED_REQUEST
            kept = None
            return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            # EXACT failed mid-body: the status line is already sent, so the only honest
            # signal left is to cut the connection and let the caller see a short body.
            upstream.close()
            exchange.error = f"stream_aborted:{type(exc).__name__}"
            if request.transport is not None:
                request.transport.close()
            kept = None
            return response
        except BaseException:
            # Cancelled: drop the half-read upstream connection rather than pool it.
            upstream.close()
            raise
        finally:
            if exchange.collect:
                exchange.answer = StoredAnswer(
                    upstream.status,
                    upstream.reason or "",
                    tuple(response_headers(upstream.headers, exchange.request_id).items()),
                    bytes(kept) if kept is not None else None,
                )
        upstream.release()
        return response

    async def _body(self, request: web.BaseRequest) -> tuple[bytes | StreamReader | None, bool]:
        """The body to send, and whether it can be sent again.

        Bodies of known length up to REPLAY_BUFFER_BYTES are read first so that a replay or a
        retry is possible; larger or chunked bodies stream straight through, sent once.
        """
        if not request.body_exists:
            return None, True
        await expect_continue(request)
        length = request.content_length
        if length is not None and length <= self._replay_buffer_bytes:
            try:
                return await request.read(), True
            except (aiohttp.ClientError, ConnectionError) as exc:
                raise CallerGone from exc
        return request.content, False

    def refused(self, error: GatewayError, request_id: str, method: str) -> None:
        """Count and log a request the listener refused before it reached this handler."""
        self._metrics.rejected.labels(error.reason).inc()
        exchange = Exchange(request_id, method_label(method), status=error.status)
        exchange.error = error.reason
        self._observe(exchange, 0.0)

    def _observe_attempt(self, route: str, outcome: str, sent: float) -> None:
        self._metrics.upstream_attempts.labels(route, outcome).inc()
        self._metrics.upstream_attempt_duration.labels(route).observe(
            self._clock.monotonic() - sent
        )

    def _feed(
        self, target: Target, status: int | None, error: GatewayError | None, sent: float
    ) -> None:
        """One attempt's outcome for the availability ledger."""
        if self._practices is not None:
            self._practices.observed(
                target.practice_id, status, error, self._clock.monotonic() - sent
            )

    def _observe(self, exchange: Exchange, elapsed: float) -> None:
        self._history.record(exchange.status, exchange.error is not None, elapsed)
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
                    **exchange.trace.log_fields(),  # trace_id, when tracing is on
                }
            },
        )
