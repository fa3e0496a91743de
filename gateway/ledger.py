"""The availability ledger: what the gateway has seen of each practice, for operators.

EXACT relays to thousands of on-premises servers, each with its own outages. A support
ticket to the vendor, or a partner's own support desk, needs per-practice facts: is it up
now and since when, when did it last answer, what went wrong and when, how many answers of
each kind in the last day, which EXACT version it runs, whether it is subscribed. The ledger
keeps exactly that and nothing else: practice ids, counts, times and kinds, never a path,
query, body or patient id.

Pure and bounded. Time comes from an injected wall clock (the ledger's times are shown to
people, so they are wall-clock times; a clock stepping backwards only makes a bucket or a
period look odd, never raises). Memory is bounded: at most ``max_entries`` practices, with
subscribed practices kept ahead of practices merely seen (each group least recently used
first out), per practice a fixed ring of 24 hourly buckets and at most ``periods_kept``
unavailability periods.

State, one of :class:`PracticeState`, by precedence:

    paused       an operator paused it (the pause file)
    unavailable  its circuit breaker is open (the breaker decides, with its thresholds)
    slow         it answers, but its recent answers took ``slow_seconds`` or more
    available    it answered
    unknown      nothing seen yet (a subscribed practice no request has reached)

Unavailability periods start when the breaker opens or a pause starts and end when it
closes or the pause ends; their cause is the kind of failure that opened the breaker
(``503``, ``504``, ``timeout``) or ``paused``.
"""

from __future__ import annotations

import csv
import io
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from gateway.exact_api import parse_version

HOURS = 24
_SECONDS_PER_HOUR = 3600
_COUNT_MAX = 2**32 - 1  # array("I") cells saturate instead of overflowing
_EWMA_WEIGHT = 0.3  # share of the newest answer in the smoothed latency
_SLOW_EXIT = 0.8  # leave "slow" below 80% of the threshold, so the state does not flap
_NOTE_MAX = 200


class Answer(StrEnum):
    """What one attempt at a practice came back with: the columns of the hourly counts."""

    OK = "2xx"
    CLIENT_ERROR = "4xx"
    BAD_GATEWAY = "502"  # the practice answered, badly
    UNAVAILABLE = "503"  # EXACT could not reach the practice
    GATEWAY_TIMEOUT = "504"  # the practice did not answer EXACT in time
    TIMEOUT = "timeout"  # no answer within our own attempt time-out
    OTHER = "other"  # 1xx, 3xx, other 5xx
    UNREACHABLE = "unreachable"  # the EXACT host itself could not be reached


ANSWERS: tuple[Answer, ...] = tuple(Answer)
# Each answer's column in an hour's counters, and the columns per hour: looked up once per
# attempt (a dict look-up instead of tuple.index, a constant instead of len()).
_COLUMN = {answer: column for column, answer in enumerate(ANSWERS)}
_WIDTH = len(ANSWERS)
_EMPTY_HOUR = bytes(4 * _WIDTH)
_FAILURES = frozenset({Answer.UNAVAILABLE, Answer.GATEWAY_TIMEOUT, Answer.TIMEOUT})
# Partner-wide: says nothing about this practice, so it changes neither state nor times.
_NEUTRAL = frozenset({Answer.UNREACHABLE})


def classify(status: int) -> Answer:
    """The answer class of an HTTP status EXACT sent."""
    if 200 <= status < 300:
        return Answer.OK
    if 400 <= status < 500:
        return Answer.CLIENT_ERROR
    return {502: Answer.BAD_GATEWAY, 503: Answer.UNAVAILABLE, 504: Answer.GATEWAY_TIMEOUT}.get(
        status, Answer.OTHER
    )


class PracticeState(StrEnum):
    PAUSED = "paused"
    UNAVAILABLE = "unavailable"
    SLOW = "slow"
    AVAILABLE = "available"
    UNKNOWN = "unknown"


PAUSED_CAUSE = "paused"


@dataclass(frozen=True, slots=True)
class LedgerPolicy:
    max_entries: int = 5000
    periods_kept: int = 10
    slow_seconds: float = 5.0


@dataclass(slots=True)
class Period:
    """One stretch of unavailability; ``end`` is None while it lasts."""

    start: float
    cause: str
    end: float | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionChange:
    added: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass(slots=True)
class _Entry:
    practice_id: str
    since: float
    state: PracticeState = PracticeState.UNKNOWN
    subscribed: bool | None = None
    pms_version: str | None = None
    last_success: float | None = None
    last_failure: float | None = None
    last_failure_kind: str | None = None
    latency: float | None = None  # smoothed seconds of answered attempts
    slow: bool = False
    breaker_open: bool = False
    pause_until: float | None = None
    pause_note: str | None = None
    # A list, not a deque: an empty deque costs ~600 bytes, and most practices never fail.
    periods: list[Period] = field(default_factory=list)
    # Ring of hourly counters: slot h % 24 holds hour h (hours since the epoch) or stale data.
    hours: array[int] = field(default_factory=lambda: array("q", [-1] * HOURS))
    counts: array[int] = field(default_factory=lambda: array("I", bytes(4 * HOURS * len(ANSWERS))))


class Ledger:
    """Per-practice availability facts, bounded in memory."""

    def __init__(self, policy: LedgerPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self._clock = clock
        # Two LRU groups: a flood of unknown ids evicts other unknown ids, never the
        # practices the partner is subscribed to (unless those alone exceed the bound).
        self._subscribed: OrderedDict[str, _Entry] = OrderedDict()
        self._seen: OrderedDict[str, _Entry] = OrderedDict()
        self._subscriptions_known = False

    def __len__(self) -> int:
        return len(self._subscribed) + len(self._seen)

    # -- recording ------------------------------------------------------------------------

    def record_attempt(
        self, practice_id: str, answer: Answer, duration_s: float | None = None
    ) -> None:
        """One attempt's outcome; ``duration_s`` (when it answered) feeds the slow state."""
        now = self._clock()
        entry = self._touch(practice_id, now)
        self._count(entry, answer, now)
        if answer in _NEUTRAL:
            return
        if answer in _FAILURES:
            entry.last_failure, entry.last_failure_kind = now, answer.value
        else:
            entry.last_success = now
            if duration_s is not None and duration_s >= 0:
                previous = entry.latency
                entry.latency = (
                    duration_s
                    if previous is None
                    else previous + _EWMA_WEIGHT * (duration_s - previous)
                )
                threshold = self.policy.slow_seconds
                entry.slow = entry.latency >= threshold * (_SLOW_EXIT if entry.slow else 1.0)
        self._settle(entry, now)

    def breaker_opened(self, practice_id: str, cause: str | None = None) -> None:
        """The practice's breaker opened: an unavailability period starts (once)."""
        now = self._clock()
        entry = self._touch(practice_id, now)
        if not entry.breaker_open:
            entry.breaker_open = True
            self._start_period(entry, now, cause or entry.last_failure_kind or "breaker")
        self._settle(entry, now)

    def breaker_closed(self, practice_id: str) -> None:
        """The practice's breaker closed again: its period ends."""
        now = self._clock()
        entry = self._touch(practice_id, now)
        if entry.breaker_open:
            entry.breaker_open = False
            self._end_period(entry, now, lambda cause: cause != PAUSED_CAUSE)
        self._settle(entry, now)

    def pause_started(self, practice_id: str, until: float, note: str = "") -> None:
        """An operator paused the practice until ``until`` (wall-clock seconds)."""
        now = self._clock()
        entry = self._touch(practice_id, now)
        if entry.pause_until is None:
            self._start_period(entry, now, PAUSED_CAUSE)
        entry.pause_until, entry.pause_note = until, note[:_NOTE_MAX]
        self._settle(entry, now)

    def pause_ended(self, practice_id: str) -> None:
        """The pause was lifted or ran out."""
        now = self._clock()
        entry = self._find(practice_id)
        if entry is None or entry.pause_until is None:
            return
        entry.pause_until = entry.pause_note = None
        self._end_period(entry, now, lambda cause: cause == PAUSED_CAUSE)
        self._settle(entry, now)

    def set_version(self, practice_id: str, pms_version: str | None) -> None:
        """The practice's ``pmsVersion``; anything that is not a dotted version is unknown."""
        parsed = parse_version(pms_version)
        self._touch(practice_id, self._clock()).pms_version = (
            None if parsed is None else str(parsed)
        )

    def set_subscriptions(self, practice_ids: Iterable[str]) -> SubscriptionChange:
        """The fresh list of active subscriptions. Practices that left are forgotten (their
        history belongs to a relationship that ended); new ones get an entry at once."""
        now = self._clock()
        wanted = {pid.upper(): pid for pid in practice_ids}
        removed = tuple(e.practice_id for k, e in self._subscribed.items() if k not in wanted)
        for key in [k for k in self._subscribed if k not in wanted]:
            del self._subscribed[key]
        for key in [k for k in self._seen if k not in wanted]:
            self._seen[key].subscribed = False
        added: list[str] = []
        first_list = not self._subscriptions_known
        for key, spelled in wanted.items():
            entry = self._subscribed.get(key)
            if entry is None:
                entry = self._seen.pop(key, None) or _Entry(spelled, since=now)
                self._subscribed[key] = entry
                if not first_list:
                    added.append(entry.practice_id)
            entry.subscribed = True
            self._bound()
        self._subscriptions_known = True
        return SubscriptionChange(tuple(added), removed)

    def forget(self, practice_id: str) -> None:
        key = practice_id.upper()
        self._subscribed.pop(key, None)
        self._seen.pop(key, None)

    # -- reading ----------------------------------------------------------------------------

    def get(self, practice_id: str) -> dict[str, Any] | None:
        """One practice, JSON-ready, with its 24 hourly buckets (oldest first); reading does
        not mark it recently used."""
        entry = self._find(practice_id)
        return None if entry is None else self._view(entry, self._clock(), hourly=True)

    def snapshot(self, *, hourly: bool = False) -> dict[str, Any]:
        """Every practice held, JSON-ready, and how many there are in each state. The hourly
        buckets are left out unless asked for: 24 x 8 numbers per practice add up."""
        now = self._clock()
        views = [self._view(entry, now, hourly=hourly) for entry in self._entries()]
        states = {state.value: 0 for state in PracticeState}
        for view in views:
            states[view["state"]] += 1
        return {
            "generated_at": _iso(now),
            "max_entries": self.policy.max_entries,
            "states": states,
            "practices": views,
        }

    def to_csv(self) -> str:
        """The list for a spreadsheet or a vendor ticket: RFC 4180 (CRLF, quoting as needed),
        one header row, one row per practice."""
        now = self._clock()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        for entry in self._entries():
            view = self._view(entry, now)
            last = view["unavailable_periods"][-1] if view["unavailable_periods"] else {}
            pause = view["pause"] or {}
            row = [
                view["practice_id"],
                view["state"],
                view["since"],
                "" if view["subscribed"] is None else str(view["subscribed"]).lower(),
                view["pms_version"] or "",
                view["last_success"] or "",
                view["last_failure"] or "",
                view["last_failure_kind"] or "",
                pause.get("until", ""),
                pause.get("note", ""),
                *(view["last_24h"][answer.value] for answer in ANSWERS),
                len(view["unavailable_periods"]),
                last.get("start", ""),
                last.get("end") or "",
                last.get("cause", ""),
            ]
            writer.writerow([_cell(value) for value in row])
        return out.getvalue()

    # -- internals --------------------------------------------------------------------------

    def _entries(self) -> Iterator[_Entry]:
        yield from self._subscribed.values()
        yield from self._seen.values()

    def _find(self, practice_id: str) -> _Entry | None:
        key = practice_id.upper()
        return self._subscribed.get(key) or self._seen.get(key)

    def _touch(self, practice_id: str, now: float) -> _Entry:
        """The practice's entry, created if new, marked most recently used."""
        key = practice_id.upper()
        for group in (self._subscribed, self._seen):
            entry = group.get(key)
            if entry is not None:
                group.move_to_end(key)
                return entry
        entry = _Entry(practice_id, since=now)
        if self._subscriptions_known:
            entry.subscribed = False
        self._seen[key] = entry
        self._bound()
        return entry

    def _bound(self) -> None:
        while len(self) > self.policy.max_entries:
            group = self._seen or self._subscribed
            group.popitem(last=False)

    def _count(self, entry: _Entry, answer: Answer, now: float) -> None:
        hour = int(now // _SECONDS_PER_HOUR)
        slot = hour % HOURS
        held = entry.hours[slot]
        if held < hour:  # a new hour for this slot: its old counts are a day old
            entry.hours[slot] = hour
            base = slot * _WIDTH
            entry.counts[base : base + _WIDTH] = array("I", _EMPTY_HOUR)
        elif held > hour:  # the clock stepped back: count in the newest slot
            slot = max(range(HOURS), key=entry.hours.__getitem__)
        cell = slot * _WIDTH + _COLUMN[answer]
        counts = entry.counts
        if counts[cell] < _COUNT_MAX:
            counts[cell] += 1

    def _start_period(self, entry: _Entry, now: float, cause: str) -> None:
        entry.periods.append(Period(now, cause))
        del entry.periods[: -self.policy.periods_kept]

    @staticmethod
    def _end_period(entry: _Entry, now: float, matches: Callable[[str], bool]) -> None:
        for period in reversed(entry.periods):
            if period.end is None and matches(period.cause):
                period.end = now
                return

    @staticmethod
    def _settle(entry: _Entry, now: float) -> None:
        if entry.pause_until is not None:
            state = PracticeState.PAUSED
        elif entry.breaker_open:
            state = PracticeState.UNAVAILABLE
        elif entry.last_success is None:
            state = PracticeState.UNKNOWN
        else:
            state = PracticeState.SLOW if entry.slow else PracticeState.AVAILABLE
        if state is not entry.state:
            entry.state, entry.since = state, now

    def _view(self, entry: _Entry, now: float, *, hourly: bool = False) -> dict[str, Any]:
        current = int(now // _SECONDS_PER_HOUR)
        buckets = []
        for hour in range(current - HOURS + 1, current + 1):
            slot = hour % HOURS
            base = slot * len(ANSWERS)
            fresh = entry.hours[slot] == hour
            buckets.append(
                {
                    "hour": _iso(hour * _SECONDS_PER_HOUR),
                    **{
                        answer.value: entry.counts[base + i] if fresh else 0
                        for i, answer in enumerate(ANSWERS)
                    },
                }
            )
        view: dict[str, Any] = {
            "practice_id": entry.practice_id,
            "state": entry.state.value,
            "since": _iso(entry.since),
            "subscribed": entry.subscribed,
            "pms_version": entry.pms_version,
            "last_success": _iso(entry.last_success),
            "last_failure": _iso(entry.last_failure),
            "last_failure_kind": entry.last_failure_kind,
            "latency_seconds": None if entry.latency is None else round(entry.latency, 3),
            "pause": None
            if entry.pause_until is None
            else {"until": _iso(entry.pause_until), "note": entry.pause_note or ""},
            "last_24h": {a.value: sum(b[a.value] for b in buckets) for a in ANSWERS},
            "unavailable_periods": [
                {
                    "start": _iso(p.start),
                    "end": _iso(p.end),
                    "cause": p.cause,
                    "seconds": round((now if p.end is None else p.end) - p.start, 3),
                }
                for p in entry.periods
            ],
        }
        if hourly:
            view["hourly"] = buckets
        return view


CSV_COLUMNS: tuple[str, ...] = (
    "practice_id",
    "state",
    "since",
    "subscribed",
    "pms_version",
    "last_success",
    "last_failure",
    "last_failure_kind",
    "pause_until",
    "pause_note",
    *(f"count_24h_{answer.value}" for answer in ANSWERS),
    "unavailable_periods",
    "last_unavailable_start",
    "last_unavailable_end",
    "last_unavailable_cause",
)


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _cell(value: object) -> str:
    """A CSV cell a spreadsheet will not run as a formula (the note is free text)."""
    text = str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text
