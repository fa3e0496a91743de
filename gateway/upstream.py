"""The boundary to the EXACT API: the gateway's own HTTP/1.1 client, header hygiene, and one
:class:`~gateway.outcome.Outcome` per attempt.

Every call to the API goes through :meth:`Upstream.send`, the one place where the client's
errors (:mod:`gateway.http1.errors`) become an outcome, and :meth:`Upstream.body`, where the
errors of a response body become a short body plus ``Reply.broken``. Nothing above this
module sees an ``Http1Error``. The client (:mod:`gateway.http1`) is desync-proof by
construction: a connection is reused only after a response whose end was framed
unambiguously and read in full, and any stray byte closes it (counted in
``upstream_connections_closed_total{cause}``). It adds no headers the caller did not send
(no cookies, no ``Accept-Encoding``, no ``User-Agent``), follows no redirects and never
decompresses. Which caller headers are sent is decided in :mod:`gateway.header_policy`.

The identity server keeps aiohttp's client (:mod:`gateway.token_client`): it is not on the
hot path and it talks to a different host.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.egress import Egress
from gateway.header_policy import (
    HOP_BY_HOP,
    NEVER_FORWARDED,
    NEVER_FORWARDED_PREFIXES,
    connection_named,
    forwarded_upstream,
)
from gateway.http1 import (
    BadResponse,
    CloseCause,
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    Http1Error,
    InvalidRequest,
    PoolStats,
    ResponseTimeout,
    UpstreamClient,
    UpstreamResponse,
)
from gateway.outcome import Outcome, OutcomeKind, help_list

API_VERSION_HEADER = "x-api-version"
DEFAULT_API_VERSION = "1.0"
# The largest response head EXACT may send (status line and fields); more is a 502.
MAX_RESPONSE_HEAD_BYTES = 65536
# Idle keep-alive connections close after this (EXACT's IIS front closes at 120 s).
IDLE_SECONDS = 30.0

Headers = list[tuple[str, str]]
# Caller headers never sent (ours replaces X-Request-ID), and response headers never returned
# (hop-by-hop; ours replaces X-Request-ID): one set lookup per header on the hot path.
_NOT_SENT = NEVER_FORWARDED | {"x-request-id"}
# EXACT's Server field names the relay's software and version: of no use to a caller and of
# use to an attacker (nginx drops it the same way), so it is not returned either.
_NOT_RETURNED = HOP_BY_HOP | {"x-request-id", "server"}


def _connection_named(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    return connection_named(headers.getall("Connection", ()))


def forwarded_value(incoming: CIMultiDictProxy[str], name: str) -> str | None:
    """The value of ``name`` as it will be sent upstream, or None if it will not be.

    A header the caller's own ``Connection`` names is hop-by-hop and stripped, so what the
    gateway decides from it (e.g. whether a POST is keyed) follows what EXACT will see.
    """
    values = incoming.getall(name, ())
    if not values or not forwarded_upstream(name.lower(), _connection_named(incoming)):
        return None
    return values[0] if len(values) == 1 else ",".join(values)


def request_headers(incoming: CIMultiDictProxy[str], token: str, request_id: str) -> Headers:
    """Headers to send upstream: the caller's end-to-end headers and the gateway's own.

    The rule is :func:`gateway.header_policy.forwarded_upstream`'s, inlined: two lookups per
    header instead of three calls and a regular expression."""
    declared = _connection_named(incoming) if "Connection" in incoming else frozenset()
    out: Headers = []
    versioned = False
    for name, value in incoming.items():
        lower = name.lower()
        if lower in _NOT_SENT or lower.startswith(NEVER_FORWARDED_PREFIXES) or lower in declared:
            continue
        out.append((name, value))
        if lower == API_VERSION_HEADER:
            versioned = True
    out.append(("Authorization", "Bearer " + token))
    out.append(("X-Request-ID", request_id))
    if not versioned:
        out.append((API_VERSION_HEADER, DEFAULT_API_VERSION))
    return out


def header_value(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of ``name`` (lower case) in a wire-order header list."""
    for key, value in headers:
        if len(key) == len(name) and key.lower() == name:
            return value
    return None


def response_headers(incoming: Iterable[tuple[str, str]], request_id: str) -> CIMultiDict[str]:
    """Headers to return to the caller: EXACT's end-to-end headers and our request id.

    One pass drops the fixed hop-by-hop fields; only an answer whose ``Connection`` names
    more than ``keep-alive`` (itself hop-by-hop already) pays for a second pass."""
    kept: list[tuple[str, str]] = []
    lowers: list[str] = []
    connection: list[str] = []
    for name, value in incoming:
        lower = name.lower()
        if lower in _NOT_RETURNED or lower.startswith("proxy-"):
            if lower == "connection":
                connection.append(value)
            continue
        kept.append((name, value))
        lowers.append(lower)
    if connection and not (len(connection) == 1 and connection[0].lower() == "keep-alive"):
        declared = connection_named(connection) - _NOT_RETURNED
        if declared:
            kept = [pair for pair, lower in zip(kept, lowers, strict=True) if lower not in declared]
    out = CIMultiDict(kept)
    if lowers.count("date") > 1 and len(dates := out.getall("Date", [])) > 1:
        out["Date"] = dates[0]  # a single field: a broken relay's second is dropped
    out["X-Request-ID"] = request_id
    return out


def build_client(api_url: str, *, connect_timeout: float, egress: Egress) -> UpstreamClient:
    """The one pooled client to the EXACT API for the life of the gateway."""
    context = egress.ssl_context()
    return UpstreamClient(
        api_url,
        connect_timeout=connect_timeout,
        idle_timeout=IDLE_SECONDS,
        max_header_bytes=MAX_RESPONSE_HEAD_BYTES,
        ssl_context=context if not isinstance(context, bool) else None,
        proxy_url=egress.proxy_url,
    )


def _failure(  # noqa: PLR0911 - one return per kind of failure
    error: Http1Error, cut_by_deadline: bool
) -> Outcome:
    detail = error.kind
    if isinstance(error, ConnectTimeout):
        return Outcome(OutcomeKind.CONNECT_TIMEOUT, False, detail=detail)
    if isinstance(error, ConnectFailed) or not error.sent:
        # Nothing left the gateway (a reused connection closed before we wrote counts too).
        if isinstance(error, InvalidRequest):
            return Outcome(OutcomeKind.INVALID_REQUEST, False, detail=str(error))
        return Outcome(OutcomeKind.CONNECT_FAILED, False, detail=detail)
    if isinstance(error, ResponseTimeout):
        kind = OutcomeKind.CUT_BY_DEADLINE if cut_by_deadline else OutcomeKind.NO_ANSWER_IN_TIME
        return Outcome(kind, True, detail=detail)
    if isinstance(error, BadResponse):
        return Outcome(OutcomeKind.BAD_RESPONSE, True, detail=str(error))
    if isinstance(error, InvalidRequest):
        return Outcome(OutcomeKind.INVALID_REQUEST, True, detail=str(error))
    # ConnectionLost after sending, BodyTimeout (cannot happen before the head).
    return Outcome(OutcomeKind.LOST_AFTER_SEND, True, detail=detail)


@dataclass(slots=True)
class Reply:
    """A response being streamed back: ``broken`` names the failure that cut its body."""

    response: UpstreamResponse
    broken: str | None = None


class Upstream:
    """Sends attempts to the EXACT API and says what came of each."""

    def __init__(self, client: UpstreamClient, attempt_timeout: float) -> None:
        self._client = client
        self._attempt_timeout = attempt_timeout

    @property
    def stats(self) -> PoolStats:
        return self._client.stats

    async def send(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes | AsyncIterator[bytes] | None,
        limit: float | None = None,
    ) -> Outcome:
        """Send one attempt; the outcome once EXACT's final response head has arrived.

        ``target`` is the caller's origin-form path and query, appended byte for byte to the
        API URL. ``limit`` is the time allowed for this attempt (default: the attempt
        time-out); a limit below the attempt time-out is the caller's deadline, so running
        out of it is ``cut_by_deadline``, never the practice's slowness. Exceptions that are
        not the client's (the caller's streamed body breaking off) pass through unchanged.
        """
        allowed = self._attempt_timeout if limit is None else limit
        try:
            response = await self._client.request(
                method,
                target,
                headers,
                body,
                header_timeout=allowed,
                read_timeout=self._attempt_timeout,
            )
        except Http1Error as error:
            return _failure(error, allowed < self._attempt_timeout)
        hint = header_value(response.headers, "retry-after")
        return Outcome.answered(response, response.status, hint)

    @staticmethod
    async def body(reply: Reply) -> AsyncIterator[bytes]:
        """The response body chunk by chunk; a failure ends it early and sets ``broken``."""
        try:
            async for chunk in reply.response:
                yield chunk
        except ConnectionLost:
            reply.broken = "ConnectionLost"
        except Http1Error as error:
            reply.broken = type(error).__name__

    async def close(self) -> None:
        await self._client.close()


class PoolCollector(Collector):
    """The API client's pool at scrape time: connections closed by cause (``stray_bytes`` is
    the desync guard at work), opened and reused totals, idle and busy now. Read from the
    pool's own counters, so a request pays nothing for these series."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream

    def collect(self) -> Iterator[Metric]:
        stats = self._upstream.stats
        closed = CounterMetricFamily(
            "exact_gateway_upstream_connections_closed",
            f"Connections to the EXACT API closed, by cause ({help_list(CloseCause)}).",
            labels=["cause"],
        )
        for cause in CloseCause:
            closed.add_metric([cause.value], stats.closed_total.get(cause.value, 0))
        yield closed
        yield CounterMetricFamily(
            "exact_gateway_upstream_connections_opened",
            "Connections to the EXACT API opened.",
            value=stats.opened_total,
        )
        yield CounterMetricFamily(
            "exact_gateway_upstream_connections_reused",
            "Requests sent on a kept-alive connection to the EXACT API.",
            value=stats.reused_total,
        )
        pool = GaugeMetricFamily(
            "exact_gateway_upstream_connections",
            "Connections to the EXACT API now, by state (idle in the pool, or busy).",
            labels=["state"],
        )
        pool.add_metric(["idle"], stats.idle)
        pool.add_metric(["busy"], stats.active)
        yield pool
