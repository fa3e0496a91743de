"""Circuit breakers: one per practice, one for the EXACT host, and a bounded table of them.

A practice's on-premises server goes offline on its own schedule; its breaker stops callers
from waiting (and EXACT from relaying) while it is down, and lets exactly one probe through
now and then to see whether it is back. The state machine is pure: time comes from the
caller (``now``), randomness from an injected ``random.Random``.

* **Closed**: calls pass. Each attempt is one observation. The breaker trips after
  ``consecutive`` failures in a row, or when at least ``min_calls`` calls in the last
  ``window`` seconds failed at ``ratio`` or more.
* **Open**: calls fail fast until ``open_until``. The open duration starts at ``open_base``,
  doubles on each re-opening without a success between, up to ``open_max``, and is shortened
  by a random share up to ``jitter`` (so breakers that opened together do not probe together);
  but never shorter than the ``Retry-After`` EXACT sent with the failures that opened it
  (capped by ``open_max``): EXACT knows better than our guess when to ask again.
* **Half-open**: one probe at a time; other callers keep failing fast. Success closes the
  breaker; failure re-opens it for longer.

Only failures that say *this practice* is unreachable count (503, 504, a time-out waiting for
it). A 502 means the practice answered (badly), 4xx means EXACT answered: both are successes
for reachability. Failures to reach the EXACT host itself are neutral here: they belong to the
partner-wide breaker, not to a thousand practice breakers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import NamedTuple

from gateway.expiring import ExpiringMap


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Observation(Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"  # says nothing about this breaker's target


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    consecutive: int = 5
    ratio: float = 0.5
    min_calls: int = 10
    window: float = 60.0
    open_base: float = 30.0
    open_max: float = 300.0
    jitter: float = 0.5
    buckets: int = 10  # the window is counted in this many slices: memory stays constant

    def open_duration(self, reopenings: int, rng: random.Random) -> float:
        nominal = min(self.open_max, self.open_base * 2.0 ** min(reopenings, 62))
        return nominal * (1.0 - self.jitter * rng.random())


class Admission(NamedTuple):
    """A breaker's answer to "may a call go through now?". A named tuple rather than a
    frozen dataclass: immutable all the same, and made in half the time (an open breaker
    makes one per refused call)."""

    allowed: bool
    probe: bool = False
    retry_after: float = 0.0


ALLOW = Admission(True)
_PROBE = Admission(True, probe=True)
_PROBE_OUT = Admission(False, retry_after=1.0)  # half-open, its one probe out

Transition = Callable[["Breaker", State, State], None]


class Breaker:
    """The state machine of one breaker."""

    __slots__ = (
        "_bucket_calls",
        "_bucket_failures",
        "_bucket_start",
        "_on_transition",
        "_policy",
        "_rng",
        "consecutive_failures",
        "key",
        "open_until",
        "opened_at",
        "probe_in_flight",
        "reopenings",
        "retry_hint",
        "state",
    )

    def __init__(
        self,
        key: str,
        policy: BreakerPolicy,
        rng: random.Random,
        on_transition: Transition | None = None,
    ) -> None:
        self.key = key
        self._policy = policy
        self._rng = rng
        self._on_transition = on_transition
        self.state = State.CLOSED
        self.consecutive_failures = 0
        self.reopenings = 0
        self.opened_at = 0.0
        self.open_until = 0.0
        self.probe_in_flight = False
        self.retry_hint = 0.0  # the longest Retry-After of the current run of failures
        self._bucket_start = [0.0] * policy.buckets
        self._bucket_calls = [0] * policy.buckets
        self._bucket_failures = [0] * policy.buckets

    # -- decisions --------------------------------------------------------------------------

    def admit(self, now: float) -> Admission:
        """May a call go through now? Open breakers say when to come back."""
        if self.state is State.CLOSED:
            return ALLOW
        if self.state is State.OPEN:
            if now < self.open_until:
                return Admission(False, False, self.open_until - now)
            self._move(State.HALF_OPEN)
        if self.probe_in_flight:
            # Half-open with its one probe out: the others wait for its verdict.
            return _PROBE_OUT
        self.probe_in_flight = True
        return _PROBE

    def record(
        self,
        now: float,
        observation: Observation,
        *,
        probe: bool = False,
        retry_after: float | None = None,
    ) -> None:
        """The outcome of an admitted call (with EXACT's ``Retry-After``, if it sent one)."""
        if probe:
            self.probe_in_flight = False
        if observation is Observation.NEUTRAL:
            return
        failed = observation is Observation.FAILURE
        self._count(now, failed)
        if not failed:
            self.retry_hint = 0.0
        elif retry_after is not None:
            self.retry_hint = max(self.retry_hint, retry_after)
        if self.state is State.HALF_OPEN:
            if not probe:
                return  # a call admitted before the breaker opened: the probe decides
            if failed:
                self.reopenings += 1
                self._open(now)
            else:
                self._close()
            return
        if self.state is State.OPEN:
            return  # late answers of calls admitted before it opened
        if not failed:
            self.consecutive_failures = 0
            self.reopenings = 0
            return
        self.consecutive_failures += 1
        if self.consecutive_failures >= self._policy.consecutive or self._ratio_tripped(now):
            self._open(now)

    def trip(self, now: float, until: float | None = None) -> None:
        """Open now, whatever the counts say (a failure seen elsewhere); until ``until``
        when given (a verdict shared by another replica, or a restored snapshot)."""
        if self.state is State.OPEN:
            if until is not None:
                self.open_until = max(self.open_until, until)
            return
        if self.state is State.HALF_OPEN:
            self.reopenings += 1
        self._open(now, until)

    def release(self) -> None:
        """An admitted probe ended without an answer (the caller left): let another try."""
        self.probe_in_flight = False

    def reset(self) -> None:
        """Forget everything (used when the failures turn out to be the EXACT host's)."""
        if self.state is not State.CLOSED:
            self._move(State.CLOSED)
        self.consecutive_failures = 0
        self.reopenings = 0
        self.probe_in_flight = False
        self.retry_hint = 0.0
        self._bucket_calls = [0] * self._policy.buckets
        self._bucket_failures = [0] * self._policy.buckets

    # -- counting ---------------------------------------------------------------------------

    def _slot(self, now: float) -> int:
        width = self._policy.window / self._policy.buckets
        index = int(now // width)
        slot = index % self._policy.buckets
        start = index * width
        if self._bucket_start[slot] != start:
            self._bucket_start[slot] = start
            self._bucket_calls[slot] = 0
            self._bucket_failures[slot] = 0
        return slot

    def _count(self, now: float, failed: bool) -> None:
        slot = self._slot(now)
        self._bucket_calls[slot] += 1
        if failed:
            self._bucket_failures[slot] += 1

    def window_counts(self, now: float) -> tuple[int, int]:
        """(calls, failures) in the last ``window`` seconds."""
        oldest = now - self._policy.window
        calls = failures = 0
        for start, n, f in zip(
            self._bucket_start, self._bucket_calls, self._bucket_failures, strict=True
        ):
            if start > oldest:
                calls += n
                failures += f
        return calls, failures

    def has_recent_failures(self, now: float) -> bool:
        """Failures in a row, or any in the window: a breaker worth keeping in the table."""
        return self.consecutive_failures > 0 or self.window_counts(now)[1] > 0

    def _ratio_tripped(self, now: float) -> bool:
        calls, failures = self.window_counts(now)
        return calls >= self._policy.min_calls and failures >= self._policy.ratio * calls

    # -- transitions ------------------------------------------------------------------------

    def _open(self, now: float, until: float | None = None) -> None:
        self.opened_at = now
        duration = self._policy.open_duration(self.reopenings, self._rng)
        duration = max(duration, min(self.retry_hint, self._policy.open_max))
        self.retry_hint = 0.0
        self.open_until = now + duration if until is None else until
        self.consecutive_failures = 0
        self._move(State.OPEN)

    def _close(self) -> None:
        self.reopenings = 0
        self.consecutive_failures = 0
        self._move(State.CLOSED)

    def _move(self, state: State) -> None:
        previous, self.state = self.state, state
        if self._on_transition is not None and previous is not state:
            self._on_transition(self, previous, state)


class BreakerTable:
    """Practice breakers, bounded in number and forgotten when idle.

    Closed breakers live in a TTL cache (least recently used evicted first when full,
    dropped after ``idle`` seconds without traffic); a closed breaker that is evicted loses
    little, its practice was healthy. Open and half-open breakers are kept apart, so a flood
    of new practice ids can never evict a breaker that is protecting an offline practice; they
    are bounded by the same maximum and dropped when idle too.
    """

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        max_entries: int,
        idle: float,
        clock: Callable[[], float],
        rng: random.Random,
        on_transition: Transition | None = None,
    ) -> None:
        self._policy = policy
        self._rng = rng
        self._clock = clock
        self._idle = idle
        self._max = max_entries
        self._on_transition = on_transition
        # LRU by last use, dropped after ``idle`` seconds unused; eviction spares breakers
        # with recent failures when it can (see _evictable).
        self._closed: ExpiringMap[str, Breaker] = ExpiringMap(
            max_entries, idle, clock, evictable=_evictable
        )
        self._active: dict[str, tuple[Breaker, float]] = {}  # breaker, last used

    def get(self, key: str) -> Breaker:
        """The breaker for ``key`` (created closed on first use)."""
        now = self._clock()
        active = self._active.get(key)
        if active is not None:
            self._active[key] = (active[0], now)
            return active[0]
        breaker = self._closed.get(key)
        if breaker is None:
            breaker = Breaker(key, self._policy, self._rng, self._transition)
        # Writing it again restarts its idle time and makes it the most recently used.
        self._closed[key] = breaker
        return breaker

    def _transition(self, breaker: Breaker, previous: State, state: State) -> None:
        if state is State.CLOSED:
            self._active.pop(breaker.key, None)
            self._closed[breaker.key] = breaker
        elif previous is State.CLOSED:
            self._closed.pop(breaker.key)
            self._expire_active()
            self._active[breaker.key] = (breaker, self._clock())
        if self._on_transition is not None:
            self._on_transition(breaker, previous, state)

    def _expire_active(self) -> None:
        now = self._clock()
        for key, (_, used) in list(self._active.items()):
            if now - used > self._idle:
                del self._active[key]
        while len(self._active) >= self._max:
            # Full of open breakers: drop the one that will probe soonest (it is the one
            # whose protection is closest to ending anyway).
            soonest = min(self._active, key=lambda k: self._active[k][0].open_until)
            del self._active[soonest]

    def forget(self, key: str) -> None:
        """Drop the breaker for ``key``, whatever its state (its practice left)."""
        self._closed.pop(key)
        self._active.pop(key, None)

    def not_closed(self) -> Iterator[Breaker]:
        self._expire_active()
        for breaker, _ in list(self._active.values()):
            yield breaker

    def counts(self) -> dict[str, int]:
        counts = {
            State.CLOSED.value: len(self._closed),
            State.OPEN.value: 0,
            State.HALF_OPEN.value: 0,
        }
        for breaker in self.not_closed():
            counts[breaker.state.value] += 1
        return counts

    def __len__(self) -> int:
        return len(self._closed) + len(self._active)

    def forgive(self, since: float) -> int:
        """Reset breakers that opened at or after ``since``: those failures were the EXACT
        host's, not the practices'. Returns how many were reset."""
        reset = 0
        for breaker in list(self.not_closed()):
            if breaker.opened_at >= since:
                breaker.reset()
                reset += 1
        for breaker in self._closed.values():
            breaker.reset()
        return reset


def _evictable(breaker: Breaker, now: float) -> bool:
    """A closed breaker the table may evict to make room: one without recent failures.

    Plain LRU let a flood of new practice ids evict a closed breaker that had just counted
    four failures of an offline practice, resetting it to zero (and the practice's callers
    paid the failures again). Eviction takes the least recently used breaker without a recent
    failure among the oldest few dozen, and only falls back to plain LRU when every one of
    those is failing (:class:`gateway.expiring.ExpiringMap`)."""
    return not breaker.has_recent_failures(now)


class PracticeOutcomes:
    """The latest outcome of each distinct practice attempted in the last ``window`` seconds.

    A correlated outage (EXACT's relay failing, not the practices) is declared when at least
    ``min_failed`` distinct practices failed *and* they are at least ``ratio`` of the distinct
    practices attempted: 20 closed surgeries touched by a nightly batch among 100 healthy
    practices are 17%, not an EXACT outage; the relay failing for everyone is 100%. Memory:
    one entry per practice attempted in the window.
    """

    def __init__(self, min_failed: int, ratio: float, window: float) -> None:
        self._min_failed = min_failed
        self._ratio = ratio
        self._window = window
        self._latest: dict[str, tuple[float, bool]] = {}  # insertion order = oldest first
        self._failed = 0

    def record(self, key: str, now: float, failed: bool) -> bool:
        """Note ``key``'s latest outcome; say whether this now looks like EXACT failing."""
        previous = self._latest.pop(key, None)
        if previous is not None and previous[1]:
            self._failed -= 1
        self._latest[key] = (now, failed)
        self._failed += failed
        oldest = now - self._window
        while self._latest:
            stale, (at, stale_failed) = next(iter(self._latest.items()))
            if at > oldest:
                break
            del self._latest[stale]
            self._failed -= stale_failed
        return (
            failed
            and self._failed >= self._min_failed
            and self._failed >= self._ratio * len(self._latest)
        )

    @property
    def failed(self) -> int:
        return self._failed

    def clear(self) -> None:
        self._latest.clear()
        self._failed = 0

    def __len__(self) -> int:
        return len(self._latest)
