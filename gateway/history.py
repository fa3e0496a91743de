"""What happened in the last fifteen minutes, kept in the process for the status page.

At 3 a.m. an on-call engineer asks "what changed, and when?" before any dashboard loads, and
a gateway may run where no Prometheus scrapes it. So the gateway keeps its own short memory:

* :class:`Traffic`: per 10-second bucket over the last 15 minutes (90 buckets, a ring): the
  requests answered, errors the gateway made (a 5xx with one of its reasons) apart from errors
  EXACT made (a 5xx it passed through), callers who hung up (``499``), and a latency histogram
  from which p50 and p99 are read. The histogram has fixed log-spaced bins (four per octave,
  0.1 ms to about 14 min), so a percentile is the upper bound of the bin holding it: never
  under the true value, at most 19% over it. Memory is fixed at start; recording one request
  increments a few counters in preallocated lists and keeps nothing per request, because
  it runs once per request on the proxy's hot path.
* :class:`EventLog`: the last few token fetches and partner-wide breaker changes, each with
  the wall-clock time, in a bounded deque (they are rare; their order is the story).

Nothing here knows aiohttp, the token or a request's path: only counts, durations, status
classes and small fixed vocabularies, so nothing secret can reach the page through it. Both
clocks are injected: bucketing follows the monotonic clock (a wall-clock step must not
scramble the ring), and times shown to people come from the wall clock.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import Any

from gateway.errors import CLIENT_CLOSED_REQUEST

BUCKET_SECONDS = 10
BUCKETS = 90  # 15 minutes
BINS_PER_OCTAVE = 4
LATENCY_FLOOR_SECONDS = 0.0001
# Upper bounds (inclusive) of the latency bins; one more bin above the last holds the rest.
LATENCY_BOUNDS: tuple[float, ...] = tuple(
    LATENCY_FLOOR_SECONDS * 2 ** (i / BINS_PER_OCTAVE) for i in range(BINS_PER_OCTAVE * 23 + 1)
)
BINS = len(LATENCY_BOUNDS) + 1
EVENTS_KEPT = 20


def percentile(bins: list[int], start: int, count: int, q: float) -> float | None:
    """The upper bound (seconds) of the bin holding the ``q`` quantile of ``count`` samples
    in ``bins[start:start + BINS]``; None with no samples. The overflow bin reports the last
    bound: "at least this long"."""
    if count <= 0:
        return None
    rank = max(1, math.ceil(q * count))
    seen = 0
    for offset in range(BINS):
        seen += bins[start + offset]
        if seen >= rank:
            return LATENCY_BOUNDS[min(offset, len(LATENCY_BOUNDS) - 1)]
    return LATENCY_BOUNDS[-1]  # unreachable while the counts agree; safe if they do not


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class Traffic:
    """Requests, errors by maker, 499s and latency per 10-second bucket, 15 minutes deep."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._started = clock()
        # Which bucket (clock seconds // BUCKET_SECONDS) each ring slot holds now; -1: none.
        self._tick = [-1] * BUCKETS
        self._requests = [0] * BUCKETS
        self._gateway_errors = [0] * BUCKETS
        self._exact_errors = [0] * BUCKETS
        self._client_closed = [0] * BUCKETS
        self._latency = [0] * (BUCKETS * BINS)  # slot-major: slot * BINS + bin
        self._empty_row = [0] * BINS

    def record(self, status: int, gateway_made: bool, seconds: float) -> None:
        """One answered request: its status, whether the gateway made an error answer (it
        carries one of the gateway's reasons), and its duration in seconds."""
        tick = int(self._clock() // BUCKET_SECONDS)
        slot = tick % BUCKETS
        if self._tick[slot] != tick:
            self._reuse(slot, tick)
        self._requests[slot] += 1
        if status >= 500:
            if gateway_made:
                self._gateway_errors[slot] += 1
            else:
                self._exact_errors[slot] += 1
        elif status == CLIENT_CLOSED_REQUEST:
            self._client_closed[slot] += 1
        self._latency[slot * BINS + bisect_left(LATENCY_BOUNDS, seconds)] += 1

    def _reuse(self, slot: int, tick: int) -> None:
        """The slot last held a bucket 15 minutes (or more) old: empty it for ``tick``."""
        self._tick[slot] = tick
        self._requests[slot] = self._gateway_errors[slot] = 0
        self._exact_errors[slot] = self._client_closed[slot] = 0
        self._latency[slot * BINS : (slot + 1) * BINS] = self._empty_row

    def snapshot(self, recent_buckets: int = 6) -> dict[str, Any]:
        """The last 15 minutes, oldest bucket first, as parallel series for charts, with the
        totals over the window and over the last ``recent_buckets`` (about a minute).

        ``seconds`` is how much of each bucket has elapsed (the newest is partial), so a rate
        is ``requests / seconds``. Buckets from before this process started are ``null``
        everywhere: "not running" must not read as "no traffic".
        """
        now = self._clock()
        wall = self._wall_clock()
        current = int(now // BUCKET_SECONDS)
        first_live = int(self._started // BUCKET_SECONDS)
        series: dict[str, list[Any]] = {key: [] for key in _SERIES}
        window = _Totals()
        recent = _Totals()
        for tick in range(current - BUCKETS + 1, current + 1):
            if tick < first_live:
                for values in series.values():
                    values.append(None)
                continue
            slot = tick % BUCKETS
            held = self._tick[slot] == tick
            start = slot * BINS
            count = self._requests[slot] if held else 0
            # The part of the bucket that has passed while this process ran.
            begins = max(tick * BUCKET_SECONDS, self._started)
            elapsed = max(0.0, min(now, (tick + 1) * BUCKET_SECONDS) - begins)
            row = (
                elapsed,
                count,
                self._gateway_errors[slot] if held else 0,
                self._exact_errors[slot] if held else 0,
                self._client_closed[slot] if held else 0,
            )
            for key, value in zip(_SERIES, row, strict=False):
                # A floor on seconds, so a rate never divides by zero on the page.
                series[key].append(round(max(value, 0.001), 3) if key == "seconds" else value)
            series["p50_ms"].append(_ms(percentile(self._latency, start, count, 0.5)))
            series["p99_ms"].append(_ms(percentile(self._latency, start, count, 0.99)))
            window.add(row, self._latency, start)
            if tick > current - recent_buckets:
                recent.add(row, self._latency, start)
        oldest = (current - BUCKETS + 1) * BUCKET_SECONDS
        return {
            "bucket_seconds": BUCKET_SECONDS,
            "buckets": BUCKETS,
            "start_unix": round(wall - (now - oldest), 3),
            "now_unix": round(wall, 3),
            "running_since_unix": round(wall - (now - self._started), 3),
            "series": series,
            "window": window.document(),
            "recent": recent.document(),
        }


_SERIES = (
    "seconds",
    "requests",
    "gateway_errors",
    "exact_errors",
    "client_closed",
    "p50_ms",
    "p99_ms",
)


class _Totals:
    """Sums over several buckets, their latency histograms merged (for the percentiles)."""

    def __init__(self) -> None:
        self.sums: list[float] = [0.0, 0, 0, 0, 0]
        self.latency = [0] * BINS

    def add(self, row: tuple[float, int, int, int, int], bins: list[int], start: int) -> None:
        self.sums = [a + b for a, b in zip(self.sums, row, strict=True)]
        if row[1]:
            for offset in range(BINS):
                self.latency[offset] += bins[start + offset]

    def document(self) -> dict[str, Any]:
        seconds, *counts = self.sums
        requests, gateway, exact, closed = (int(count) for count in counts)
        return {
            "seconds": round(seconds, 3),
            "requests": requests,
            "gateway_errors": gateway,
            "exact_errors": exact,
            "client_closed": closed,
            "p50_ms": _ms(percentile(self.latency, 0, requests, 0.5)),
            "p99_ms": _ms(percentile(self.latency, 0, requests, 0.99)),
        }


class EventLog:
    """The last ``kept`` events, newest last, each stamped with the wall-clock time."""

    def __init__(self, kept: int = EVENTS_KEPT, wall_clock: Callable[[], float] = time.time):
        self._events: deque[dict[str, str | float | None]] = deque(maxlen=kept)
        self._wall_clock = wall_clock

    def add(self, **fields: str | float | None) -> None:
        event: dict[str, str | float | None] = {"at_unix": round(self._wall_clock(), 3)}
        self._events.append(event | fields)

    def recent(self) -> list[dict[str, str | float | None]]:
        """Newest first: the page reads from the top."""
        return list(reversed(self._events))


class History:
    """The gateway's short memory: traffic, token fetches and the EXACT breaker's changes.

    Its two ``*_changed`` methods are the listeners :class:`gateway.tokens.TokenSource` and
    :class:`gateway.resilience.Resilience` call; they receive only fixed vocabularies and
    numbers (a fetch's result label, a breaker state and cause).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        *,
        events_kept: int = EVENTS_KEPT,
    ) -> None:
        self.traffic = Traffic(clock, wall_clock)
        self.tokens = EventLog(events_kept, wall_clock)
        self.upstream_breaker = EventLog(events_kept, wall_clock)
        # Bound once: the proxy calls this per request, so no attribute lookups on the way.
        self.record = self.traffic.record

    def token_changed(self, result: str, lifetime: float | None) -> None:
        """A token fetch ended (``success`` or the failure's label) or EXACT refused the token
        (``rejected_by_exact``); ``lifetime`` in seconds for a new token."""
        self.tokens.add(
            result=result,
            lifetime_seconds=None if lifetime is None else round(lifetime, 1),
        )

    def upstream_breaker_changed(
        self, state: str, cause: str | None, open_for: float | None
    ) -> None:
        """The partner-wide breaker moved to ``state`` (``open``, ``half_open``, ``closed``)."""
        self.upstream_breaker.add(
            state=state,
            cause=cause,
            open_for_seconds=None if open_for is None else round(open_for, 1),
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "traffic": self.traffic.snapshot(),
            "token_events": self.tokens.recent(),
            "upstream_breaker_events": self.upstream_breaker.recent(),
        }
