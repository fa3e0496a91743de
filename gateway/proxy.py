"""The request path: guard, limit, admit, attach the token, attempt (and retry), stream back.

One handler serves every request on the proxy port (the caller edge's own HTTP/1.1 server,
:mod:`gateway.caller.http11`, with no router in front of it: ``CONNECT`` and ``*`` targets
reach the guard instead of a 404). For each request, in order:

1. the target guard (:mod:`gateway.routes`) and the caller's ``X-Gateway-Timeout``;
2. the concurrency limits (:mod:`gateway.resilience.bulkhead`), held for the whole request;
3. for each attempt: the breakers (:mod:`gateway.resilience`), the token, one call to EXACT;
   its outcome feeds the breakers; a retryable outcome is retried when the retry policy, the
   deadline and the retry budget all allow it (:mod:`gateway.resilience.retry`,
   :mod:`gateway.resilience.budget`);
4. the response streams back. Nothing is buffered but the connections' read buffers and,
   when a replay is possible, a small request body, so a 50 MB answer costs a few hundred
   kilobytes.

Counting, logging and the availability ledger run just after the answer is written, never
before it.

Errors the gateway produces itself are problem+json with ``X-Gateway-Error``; answers from
EXACT, errors included, pass through untouched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from multidict import CIMultiDict

from gateway.access_log import AccessLog
from gateway.caller import (
    NO_BODY_STATUSES,
    Answer,
    AnswerStream,
    IncomingRequest,
    RequestBody,
    problem_answer,
)
from gateway.errors import (
    CLIENT_CLOSED_REQUEST,
    BadRequest,
    CallerGone,
    CircuitOpen,
    DeadlineExceeded,
    GatewayError,
    UpstreamCircuitOpen,
    UpstreamTimeout,
)
from gateway.exchange import (
    Exchange,
    Observer,
    RequestIds,
)
from gateway.history import History
from gateway.http1 import UpstreamResponse
from gateway.idempotency import (
    KEYED_METHODS,
    Claim,
    IdempotencyKeys,
    StoredAnswer,
    fingerprint,
    valid_key,
)
from gateway.metrics import Metrics
from gateway.outcome import Outcome, OutcomeKind, SkipReason
from gateway.policies import ProxyPolicy
from gateway.practices.watch import DetailsTap, PracticeWatch
from gateway.resilience import Resilience, Ticket
from gateway.resilience.decision import Action
from gateway.routes import Target, method_label, parse_target
from gateway.tokens import TokenSource
from gateway.tracing import Tracing
from gateway.upstream import (
    Reply,
    Upstream,
    forwarded_value,
    header_value,
    request_headers,
    response_headers,
)

log = logging.getLogger("exact_gateway.proxy")


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


# A failed answer kept across a retry's wait, in case the retry is refused (bounded).
RETAINED_ANSWER_BYTES = 65536


def stored_response(answer: StoredAnswer, request_id: str) -> Answer:
    """An answer kept from earlier (an idempotent replay, or a retry that was refused)."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in answer.headers:
        if name.lower() not in {"content-length", "x-request-id", "transfer-encoding"}:
            headers.add(name, value)
    headers["X-Request-ID"] = request_id
    return Answer(answer.status, answer.body or b"", headers, answer.reason)


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

    def __init__(self, reader: RequestBody) -> None:
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


async def _retain(upstream: UpstreamResponse) -> StoredAnswer | None:
    """Keep a small failed answer across a retry's wait (then its connection is free)."""
    reply = Reply(upstream)
    try:
        length = header_value(upstream.headers, "content-length")
        if length is not None and length.isdigit() and int(length) > RETAINED_ANSWER_BYTES:
            return None
        body = bytearray()
        async for chunk in Upstream.body(reply):
            body += chunk
            if len(body) > RETAINED_ANSWER_BYTES:
                return None
        if reply.broken is not None:
            return None
        return StoredAnswer(upstream.status, upstream.reason, tuple(upstream.headers), bytes(body))
    finally:
        upstream.close()


def _problem_answer(error: GatewayError, exchange: Exchange) -> StoredAnswer:
    if error.practice_id is None:
        error.practice_id = exchange.practice_id
    response = problem_answer(error, exchange.request_id)
    return StoredAnswer(
        response.status, response.reason, tuple(response.headers.items()), response.body
    )


class _Copies:
    """Where a streamed answer's bytes go besides the caller: the Idempotency-Key record (up
    to its bound) and the practice-version tap of a GetPracticeDetails answer."""

    __slots__ = ("_kept", "_limit", "_tap")

    def __init__(self, collect: bool, limit: int, tap: DetailsTap | None) -> None:
        self._kept: bytearray | None = bytearray() if collect else None
        self._limit = limit
        self._tap = tap

    def feed(self, chunk: bytes) -> None:
        if self._kept is not None:
            self._kept += chunk
            if len(self._kept) > self._limit:
                self._kept = None  # too large to replay: the record keeps status and headers
        if self._tap is not None:
            self._tap.feed(chunk)

    def tap_whole(self, body: bytes) -> None:
        if self._tap is not None:
            self._tap.feed(body)
            self._tap.finish()

    def finish(self) -> None:
        if self._tap is not None:
            self._tap.finish()

    def drop(self) -> None:
        self._kept = None

    def kept_body(self) -> bytes | None:
        return bytes(self._kept) if self._kept is not None else None


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
        access_log: AccessLog | None = None,
        practices: PracticeWatch | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._idempotency = idempotency
        self._practices = practices
        self._tracing = tracing if tracing is not None else Tracing()
        self._observer = Observer(
            metrics, history, access_log if access_log is not None else AccessLog()
        )
        self._upstream = upstream
        self._tokens = tokens
        self._resilience = resilience
        # One clock for the whole request path: the one the breakers and deadlines use.
        self._clock = resilience.clock
        self._attempt_timeout = policy.attempt_timeout
        self._deadline = policy.deadline
        self._replay_buffer_bytes = policy.replay_buffer_bytes
        self._request_ids = RequestIds()
        self._loop = asyncio.get_running_loop()

    async def __call__(self, request: IncomingRequest) -> Answer | AnswerStream:
        started = self._clock.monotonic()
        exchange = Exchange(
            self._request_ids.for_request(request.headers.get("X-Request-ID")),
            method_label(request.method),
        )
        exchange.trace = self._tracing.request(request.method, request.headers)
        try:
            target = parse_target(request.method, request.raw_path)
            exchange.route, exchange.practice_id = target.route, target.practice_id
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
            self._observer.rejected(error.reason)
            if error.practice_id is None:
                error.practice_id = exchange.practice_id
            return problem_answer(error, exchange.request_id)
        except CallerGone:
            exchange.status, exchange.error = CLIENT_CLOSED_REQUEST, "client_disconnected"
            return Answer(CLIENT_CLOSED_REQUEST)  # nobody is left to read it
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
            self._observer.rejected(internal.reason)
            return problem_answer(internal, exchange.request_id)
        finally:
            # Counted, logged and its span ended just after the connection has written the
            # answer (it does so as soon as this returns), so none of it delays the caller.
            self._loop.call_soon(self._settled, exchange, self._clock.monotonic() - started)

    def _settled(self, exchange: Exchange, elapsed: float) -> None:
        self._observer.request(exchange, elapsed)
        exchange.trace.end(exchange.route, exchange.status, exchange.error)

    async def _claim(
        self,
        request: IncomingRequest,
        target: Target,
        exchange: Exchange,
        body: bytes | RequestBody | None,
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
            answer = _problem_answer(
                UpstreamTimeout(
                    "the first request with this Idempotency-Key ended before EXACT answered;"
                    " it may have been carried out, so it is not sent again"
                ),
                exchange,
            )
        self._idempotency.complete(claim, answer)

    async def _within_limits(
        self,
        request: IncomingRequest,
        target: Target,
        exchange: Exchange,
        body: bytes | RequestBody | None,
    ) -> Answer | AnswerStream:
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
        request: IncomingRequest,
        target: Target,
        exchange: Exchange,
        caller_body: bytes | RequestBody | None,
    ) -> Answer | AnswerStream:
        """The attempt loop: I/O only. What each attempt's outcome means is
        :meth:`Resilience.decide`'s call; this carries the decision out."""
        body = _CallerBody(caller_body) if isinstance(caller_body, RequestBody) else caller_body
        clock = self._clock
        token = await exchange.trace.token(self._tokens, exchange.deadline - clock.monotonic())
        self._resilience.budget.record_request(clock.monotonic())
        # This request's own last outcome, kept across a retry's wait: EXACT's failed answer
        # (None when too large to keep) or the gateway error a failed attempt means.
        own_last: StoredAnswer | GatewayError | None = None
        while True:
            try:
                ticket, outcome = await self._attempt(request, target, exchange, token, body)
            except (CircuitOpen, UpstreamCircuitOpen) as refused:
                # Refused without trying, the breaker is the honest reason; a retry refused by
                # a breaker another request opened meanwhile hears its own last outcome.
                if own_last is None:
                    raise
                if isinstance(own_last, GatewayError):
                    raise own_last from refused
                return stored_response(own_last, exchange.request_id)
            decision = self._resilience.decide(ticket, outcome, exchange)
            if decision.skipped is not None:
                self._trace_skip(exchange, ticket, decision.skipped)
            response: UpstreamResponse | None = outcome.response
            action = decision.action
            if action is Action.ANSWER:
                assert response is not None  # noqa: S101 - ANSWER is only given a response
                return await self._stream(request, response, exchange)
            if action is Action.REFUSE:
                if response is not None:
                    response.close()
                assert decision.error is not None  # noqa: S101 - REFUSE carries its error
                raise decision.error
            assert response is not None or action is Action.RETRY  # noqa: S101
            if action is Action.REPLAY:
                assert response is not None  # noqa: S101 - a 401 is a response
                # EXACT refused the token (revoked, or expired in a way we could not see).
                # A new one once per token generation, and one replay if the body allows.
                exchange.token_replaced = True
                try:
                    replacement = await self._tokens.replace(token)
                except GatewayError:
                    response.close()
                    raise
                if replacement is None or not exchange.replayable:
                    return await self._stream(request, response, exchange)
                response.close()
                token = replacement
                continue
            own_last = outcome.error() if response is None else await _retain(response)
            retry = decision.retry.value if decision.retry is not None else ""
            exchange.trace.event("retry", {"reason": retry, "wait_s": decision.wait})
            await clock.sleep(decision.wait)

    def _trace_skip(self, exchange: Exchange, ticket: Ticket, skipped: SkipReason) -> None:
        """A span event for a retry not made: the breaker this attempt opened, or the rule."""
        opened = self._resilience.opened_by(ticket) if skipped is SkipReason.BREAKER else None
        if opened is not None:
            exchange.trace.breaker_opened(opened)
        else:
            exchange.trace.event("retry.skipped", {"reason": skipped.value})

    async def _attempt(
        self,
        request: IncomingRequest,
        target: Target,
        exchange: Exchange,
        token: str,
        body: bytes | _CallerBody | None,
    ) -> tuple[Ticket, Outcome]:
        """One call to EXACT, cleared with the breakers first."""
        clock = self._clock
        sent = clock.monotonic()
        remaining = exchange.deadline - sent
        if remaining <= 0:
            raise DeadlineExceeded("the request's deadline passed before EXACT answered")
        ticket = exchange.trace.admit(self._resilience, target.practice_id)
        limit = self._attempt_timeout if remaining > self._attempt_timeout else remaining
        headers = request_headers(request.headers, token, exchange.request_id)
        span = exchange.trace.attempt(request.method, target.route, exchange.attempts)
        span.inject(headers)
        exchange.attempts += 1
        try:
            outcome = await span.sent(
                self._upstream.send(
                    request.method,
                    target.path,
                    headers,
                    aiter(body) if isinstance(body, _CallerBody) else body,
                    limit,
                )
            )
        except BaseException as exc:
            self._resilience.abandon(ticket)
            if isinstance(body, _CallerBody) and (cause := body.failure()) is not None:
                # The send failed because the caller's body broke off, not because of EXACT:
                # too slow (408) or malformed (400) is the caller's answer, gone is 499.
                if isinstance(cause, GatewayError):
                    raise cause from exc
                raise CallerGone from exc
            exchange.maybe_delivered = True  # cancelled mid-send: assume it may have arrived
            raise
        # Read before anything else runs: was the attempt waiting on the caller's own body?
        exchange.caller_stalled = isinstance(body, _CallerBody) and body.waiting_for_caller
        if outcome.maybe_delivered:
            exchange.maybe_delivered = True
        if not exchange.caller_stalled:
            # Bookkeeping only (the breakers hear the outcome in Resilience.decide): done just
            # after the answer is written, off the caller's critical path.
            self._loop.call_soon(self._attempted, target, outcome, clock.monotonic() - sent)
        return ticket, outcome

    def _attempted(self, target: Target, outcome: Outcome, elapsed: float) -> None:
        """One attempt's outcome for the attempt metrics and the availability ledger."""
        self._observer.attempt(target.route, outcome.label, elapsed)
        if self._practices is not None and outcome.kind is not OutcomeKind.CUT_BY_DEADLINE:
            failed = outcome.kind is not OutcomeKind.RESPONSE
            self._practices.observed(
                target.practice_id,
                None if failed else outcome.status,
                outcome.error() if failed else None,
                elapsed,
            )

    async def _stream(
        self, request: IncomingRequest, upstream: UpstreamResponse, exchange: Exchange
    ) -> Answer | AnswerStream:
        headers = response_headers(upstream.headers, exchange.request_id)
        status = upstream.status
        copies = _Copies(
            exchange.collect,
            self._idempotency.max_response_bytes if self._idempotency is not None else 0,
            # A GetPracticeDetails answer tells the practice's EXACT version.
            self._practices.tap(exchange.method, exchange.route, exchange.practice_id, status)
            if self._practices is not None
            else None,
        )
        if request.method != "HEAD" and status not in NO_BODY_STATUSES:
            body = upstream.complete_body()
            if body is not None:
                # The fast path: the whole answer is in. Its connection goes back to the pool
                # now, and head and body leave in one write.
                upstream.release()
                # The version tap reads the body after the answer is written.
                self._loop.call_soon(copies.tap_whole, body)
                return self._whole(upstream, headers, body, exchange)
        reply = Reply(upstream)
        try:
            response = await request.stream(status, upstream.reason, headers)
            async for chunk in Upstream.body(reply):
                copies.feed(chunk)
                await response.write(chunk)
            if reply.broken is not None:
                # EXACT failed mid-body: the status line is already sent, so the only honest
                # signal left is to cut the connection and let the caller see a short body.
                upstream.close()
                exchange.error = f"stream_aborted:{reply.broken}"
                response.abort()
                copies.drop()
                return response
            await response.end()
            copies.finish()
        except ConnectionError:
            # The caller hung up mid-body, or stopped reading and the listener cut it off
            # (our write raises this): drop the half-read upstream connection.
            upstream.close()
            slow = request.cut_off
            exchange.error = slow.reason if slow is not None else "client_disconnected"
            exchange.status = CLIENT_CLOSED_REQUEST
            copies.drop()
            return Answer(CLIENT_CLOSED_REQUEST)
        except BaseException:
            # Cancelled: drop the half-read upstream connection rather than pool it.
            upstream.close()
            raise
        finally:
            if exchange.collect:
                exchange.answer = StoredAnswer(
                    upstream.status, upstream.reason, tuple(headers.items()), copies.kept_body()
                )
        upstream.release()
        return response

    def _whole(
        self, upstream: UpstreamResponse, headers: CIMultiDict[str], body: bytes, exchange: Exchange
    ) -> Answer:
        headers.popall("Content-Length", None)  # the connection sets it from the body
        response = Answer(upstream.status, body, headers, upstream.reason)
        if exchange.collect:
            limit = self._idempotency.max_response_bytes if self._idempotency is not None else 0
            exchange.answer = StoredAnswer(
                upstream.status,
                upstream.reason,
                tuple(headers.items()),
                body if len(body) <= limit else None,
            )
        return response

    async def _body(self, request: IncomingRequest) -> tuple[bytes | RequestBody | None, bool]:
        """The body to send, and whether it can be sent again.

        Bodies of known length up to REPLAY_BUFFER_BYTES are read first so that a replay or a
        retry is possible; larger or chunked bodies stream straight through, sent once.
        """
        if not request.body_exists:
            return None, True
        request.expect_continue()
        length = request.content_length
        if length is not None and length <= self._replay_buffer_bytes:
            try:
                return await request.read(), True
            except ConnectionError as exc:
                raise CallerGone from exc
        return request.content, False

    def refused(self, error: GatewayError, request_id: str, method: str) -> None:
        """Count and log a request the listener refused before it reached this handler."""
        self._observer.rejected(error.reason)
        exchange = Exchange(request_id, method_label(method), status=error.status)
        exchange.error = error.reason
        self._observer.request(exchange, 0.0)
