"""Rebuild the availability ledger from its saved snapshot after a restart.

:class:`gateway.ledger.Ledger` can describe itself (``snapshot(hourly=True)``) but has no
way back. This is that way back, kept beside the state file until the ledger grows its own
``Ledger.from_snapshot(view, policy, clock, open_practices)`` classmethod (the same
signature; it would then move there unchanged). It fills the ledger's entries directly, so
it lives and changes with the ledger's internals: the round-trip test pins it.

The view comes from a file and is checked as hostile input: any field that is not what the
ledger itself writes rejects the whole view (``ValueError``), and the caller starts with an
empty ledger. What is restored: every practice (the subscribed ones first, each group in
its least-recently-used order, bounded by the policy), its state facts, version, smoothed
latency, the 24 hourly buckets and the unavailability periods. Two things are not taken
from the file but from the present: whether the practice's breaker is open (only practices
in ``open_practices``, the breakers the state file restored; other open periods end at the
snapshot's time), and operator pauses (the pause file applies them again; a pause period
left open ends at the snapshot's time).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

from gateway.exact_api import PRACTICE_ID
from gateway.ledger import (
    _COUNT_MAX,
    _NOTE_MAX,
    _SECONDS_PER_HOUR,
    ANSWERS,
    HOURS,
    PAUSED_CAUSE,
    Ledger,
    LedgerPolicy,
    Period,
    PracticeState,
    _Entry,
)

_KINDS = frozenset(answer.value for answer in ANSWERS) | {"breaker"}


def ledger_from_snapshot(
    view: dict[str, Any],
    policy: LedgerPolicy,
    clock: Callable[[], float],
    open_practices: Collection[str] = (),
) -> Ledger:
    """A ledger holding what ``view`` describes; ValueError if any of it is malformed."""
    try:
        return _restore(view, policy, clock, {p.upper() for p in open_practices})
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"not a ledger snapshot ({type(exc).__name__})") from None


def _restore(
    view: dict[str, Any], policy: LedgerPolicy, clock: Callable[[], float], open_keys: set[str]
) -> Ledger:
    ledger = Ledger(policy, clock)
    written = _time(view["generated_at"])
    practices = view["practices"]
    if not isinstance(practices, list):
        raise TypeError("practices is not a list")
    for item in practices[: policy.max_entries]:
        entry = _entry(item, policy, written, open_keys)
        group = ledger._subscribed if entry.subscribed else ledger._seen
        group[entry.practice_id.upper()] = entry
        if entry.subscribed is not None:
            ledger._subscriptions_known = True
    return ledger


def _entry(
    item: dict[str, Any], policy: LedgerPolicy, written: float, open_keys: set[str]
) -> _Entry:
    practice_id = item["practice_id"]
    if not isinstance(practice_id, str) or not PRACTICE_ID.fullmatch(practice_id):
        raise ValueError("invalid practice id")
    saved_since = _time(item["since"])
    saved_state = PracticeState(item["state"])
    entry = _Entry(practice_id, since=written)
    subscribed = item["subscribed"]
    if subscribed is not None and not isinstance(subscribed, bool):
        raise ValueError("subscribed is not a boolean")
    entry.subscribed = subscribed
    version = item["pms_version"]
    if version is not None and (not isinstance(version, str) or len(version) > 64):
        raise ValueError("invalid version")
    entry.pms_version = version
    entry.last_success = _optional_time(item["last_success"])
    entry.last_failure = _optional_time(item["last_failure"])
    kind = item["last_failure_kind"]
    if kind is not None and kind not in _KINDS:
        raise ValueError("invalid failure kind")
    entry.last_failure_kind = kind
    latency = item["latency_seconds"]
    if latency is not None:
        entry.latency = _count(latency, float_ok=True)
    entry.slow = saved_state is PracticeState.SLOW
    entry.breaker_open = practice_id.upper() in open_keys
    periods = item["unavailable_periods"]
    if not isinstance(periods, list):
        raise TypeError("periods is not a list")
    for raw in periods[-policy.periods_kept :]:
        cause = raw["cause"]
        if not isinstance(cause, str) or not cause or len(cause) > _NOTE_MAX:
            raise ValueError("invalid period cause")
        period = Period(_time(raw["start"]), cause, _optional_time(raw["end"]))
        if period.end is None and (cause == PAUSED_CAUSE or not entry.breaker_open):
            period.end = max(period.start, written)
        entry.periods.append(period)
    for bucket in item["hourly"][-HOURS:]:
        hour = int(_time(bucket["hour"]) // _SECONDS_PER_HOUR)
        slot = hour % HOURS
        entry.hours[slot] = hour
        base = slot * len(ANSWERS)
        for i, answer in enumerate(ANSWERS):
            entry.counts[base + i] = int(_count(bucket[answer.value]))
    Ledger._settle(entry, written)
    if entry.state is saved_state:
        entry.since = saved_since  # the same state as before the restart: since then
    return entry


def _time(value: Any) -> float:
    if not isinstance(value, str) or len(value) > 40:
        raise ValueError("not a time")
    return datetime.fromisoformat(value).timestamp()


def _optional_time(value: Any) -> float | None:
    return None if value is None else _time(value)


def _count(value: Any, *, float_ok: bool = False) -> float:
    allowed = (int, float) if float_ok else (int,)
    if isinstance(value, bool) or not isinstance(value, allowed) or not 0 <= value <= _COUNT_MAX:
        raise ValueError("not a count")
    return float(value)
