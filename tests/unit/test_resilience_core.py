"""The resilience state machines with a fake clock: breakers, table, budget, bulkhead, retry."""

from __future__ import annotations

import random
import tracemalloc
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from gateway.errors import GatewayBusy, PracticeBusy, UpstreamTimeout, UpstreamUnreachable
from gateway.resilience.breaker import (
    Breaker,
    BreakerPolicy,
    BreakerTable,
    Observation,
    PracticeOutcomes,
    State,
)
from gateway.resilience.budget import RetryBudget
from gateway.resilience.bulkhead import Bulkhead
from gateway.resilience.retry import (
    RetryPolicy,
    Verdict,
    decide,
    parse_retry_after,
    retry_reason,
)
from tests.fakes import FakeClock

FAIL, OK, NEUTRAL = Observation.FAILURE, Observation.SUCCESS, Observation.NEUTRAL
POLICY_FOR_HINTS = BreakerPolicy(consecutive=5, open_base=30, open_max=300, jitter=0.5)


def breaker(**policy: float) -> Breaker:
    return Breaker("UKTEST1", BreakerPolicy(**policy), random.Random(1))  # type: ignore[arg-type]


# -- breaker ------------------------------------------------------------------------------


def test_opens_after_consecutive_failures() -> None:
    """Five failures in a row open it; a success in between resets the run."""
    b = breaker()
    for _ in range(4):
        b.record(0, FAIL)
    b.record(0, OK)
    for _ in range(4):
        b.record(1, FAIL)
    assert b.state is State.CLOSED
    b.record(1, FAIL)
    assert b.state is State.OPEN
    assert not b.admit(1.1).allowed


def test_opens_on_failure_ratio_over_the_window() -> None:
    """Half of at least ten calls in the window failing opens it, without a run of five."""
    b = breaker(consecutive=100)
    for i in range(9):
        b.record(i, FAIL if i % 2 else OK)
    assert b.state is State.CLOSED  # 9 calls: below the minimum
    b.record(9, FAIL)
    assert b.state is State.OPEN


def test_old_calls_leave_the_window() -> None:
    """Failures older than the window no longer count towards the ratio."""
    b = breaker(consecutive=100, window=60)
    for _ in range(4):
        b.record(0, FAIL)
    assert b.window_counts(0) == (4, 4)
    for i in range(9):
        b.record(70 + i, OK)
    b.record(79, FAIL)  # 10 calls in the window, 1 failed; the 4 old failures are gone
    assert b.window_counts(79) == (10, 1)
    assert b.state is State.CLOSED


def test_open_duration_grows_with_jitter_and_cap() -> None:
    """30 s, doubling on each re-opening to 300 s, shortened by up to 50% at random."""
    policy = BreakerPolicy()
    rng = random.Random(3)
    for reopenings, nominal in [(0, 30), (1, 60), (2, 120), (3, 240), (4, 300), (9, 300)]:
        for _ in range(50):
            duration = policy.open_duration(reopenings, rng)
            assert nominal * 0.5 <= duration <= nominal


def test_half_open_lets_exactly_one_probe_through() -> None:
    """After the open time one caller probes; the others fail fast until its verdict."""
    b = breaker(jitter=0, open_base=30)
    for _ in range(5):
        b.record(0, FAIL)
    assert b.admit(29.9).allowed is False
    assert b.admit(29.9).retry_after == pytest.approx(0.1)
    probe = b.admit(30)
    assert probe.allowed
    assert probe.probe
    assert b.state is State.HALF_OPEN
    assert [b.admit(30.1).allowed for _ in range(10)] == [False] * 10
    b.record(30.2, OK, probe=True)
    assert b.state is State.CLOSED
    assert b.admit(30.3).allowed


def test_failed_probe_reopens_for_longer() -> None:
    """A failed probe re-opens the breaker for twice as long."""
    b = breaker(jitter=0, open_base=30)
    for _ in range(5):
        b.record(0, FAIL)
    assert b.admit(30).probe
    b.record(30, FAIL, probe=True)
    assert b.state is State.OPEN
    assert b.open_until == pytest.approx(90)
    assert b.admit(90).probe
    b.record(90, FAIL, probe=True)
    assert b.open_until == pytest.approx(90 + 120)


def test_neutral_outcomes_and_released_probes() -> None:
    """EXACT-host failures say nothing about the practice; a probe whose caller left is freed."""
    b = breaker(jitter=0)
    for _ in range(10):
        b.record(0, NEUTRAL)
    assert b.state is State.CLOSED
    assert b.window_counts(0) == (0, 0)
    for _ in range(5):
        b.record(0, FAIL)
    assert b.admit(30).probe
    b.release()
    assert b.admit(30).probe  # another caller may probe
    b.record(30, NEUTRAL, probe=True)
    assert b.state is State.HALF_OPEN
    assert b.admit(30).probe


# -- table --------------------------------------------------------------------------------


def table(max_entries: int = 100, idle: float = 3600) -> tuple[BreakerTable, list[float]]:
    now = [0.0]
    t = BreakerTable(
        BreakerPolicy(jitter=0),
        max_entries=max_entries,
        idle=idle,
        clock=lambda: now[0],
        rng=random.Random(1),
    )
    return t, now


def test_table_is_bounded_and_never_evicts_open_breakers_first() -> None:
    """10,000 practice ids: at most max closed breakers kept; open ones survive the flood."""
    t, now = table(max_entries=100)
    for practice in ("OFF1", "OFF2"):
        for _ in range(5):
            t.get(practice).record(now[0], FAIL)
    for i in range(10_000):
        t.get(f"P{i}").record(now[0], OK)
    assert len(t) <= 102
    assert {b.key for b in t.not_closed()} == {"OFF1", "OFF2"}
    assert t.counts() == {"closed": 100, "open": 2, "half_open": 0}


def test_table_forgets_idle_breakers() -> None:
    """A practice unused for the idle time is forgotten, open or not."""
    t, now = table(idle=3600)
    t.get("A").record(0, OK)
    for _ in range(5):
        t.get("B").record(0, FAIL)
    now[0] = 3601
    assert len(list(t.not_closed())) == 0
    assert t.counts()["closed"] == 0


def test_table_memory_for_10000_practices() -> None:
    """10,000 distinct ids against the default bound of 5,000: memory stays flat."""
    t, now = table(max_entries=5000)
    tracemalloc.start()
    for i in range(5000):
        t.get(f"UKP{i:05d}").record(now[0], OK)
    at_bound = tracemalloc.get_traced_memory()[0]
    for i in range(5000, 10_000):
        t.get(f"UKP{i:05d}").record(now[0], FAIL if i % 10 == 0 else OK)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(
        f"breaker table: 5,000 ids {at_bound / 1024:.0f} KiB,"
        f" 10,000 ids {after / 1024:.0f} KiB ({len(t)} breakers held)"
    )
    assert len(t) == 5000
    assert after < at_bound * 1.2


def test_forgive_resets_breakers_opened_in_the_window() -> None:
    """Breakers opened by an EXACT-wide outage are reset; older ones stay open."""
    t, now = table()
    for _ in range(5):
        t.get("OLD").record(0, FAIL)
    now[0] = 100
    for _ in range(5):
        t.get("NEW").record(100, FAIL)
    assert t.forgive(since=95) == 1
    assert {b.key for b in t.not_closed()} == {"OLD"}


def test_correlated_rule_counts_distinct_practices_failing() -> None:
    """Twenty distinct practices failing within ten seconds, and nothing else attempted,
    is one upstream problem; one practice failing many times is not."""
    detector = PracticeOutcomes(min_failed=20, ratio=0.8, window=10)
    assert not any(detector.record("SAME", i * 0.1, True) for i in range(100))
    assert not any(detector.record(f"P{i}", 50 + i, True) for i in range(19))  # spread out
    assert len(detector) < 20
    assert any(detector.record(f"Q{i}", 100 + i * 0.1, True) for i in range(20))


def test_correlated_rule_is_relative_to_the_practices_attempted() -> None:
    """20 offline practices among 100 healthy ones (17%) never look like EXACT failing; the
    relay failing for all of them does."""
    detector = PracticeOutcomes(min_failed=20, ratio=0.8, window=10)
    now = 0.0
    for round_ in range(5):
        for i in range(100):
            now += 0.01
            assert not detector.record(f"OK{i}", now, False)
        for i in range(20):
            now += 0.01
            assert not detector.record(f"OFF{round_}-{i}", now, True)
    assert detector.failed >= 20
    tripped = [detector.record(f"OK{i}", now + 0.01 * i, True) for i in range(100)]
    assert any(tripped)


def test_a_practice_counts_by_its_latest_outcome() -> None:
    """A practice that failed and then answered is no longer counted as failing."""
    detector = PracticeOutcomes(min_failed=2, ratio=0.5, window=10)
    detector.record("A", 0, True)
    detector.record("A", 1, False)
    assert detector.failed == 0
    assert not detector.record("B", 2, True)
    assert detector.record("C", 3, True)  # B and C of A, B, C: two thirds


def test_open_time_is_at_least_exacts_retry_after() -> None:
    """EXACT said Retry-After: 120 with the failures that opened the breaker: it stays open
    at least 120 s (the jittered 30 s would probe too early), capped by the maximum."""
    breaker = Breaker("P", POLICY_FOR_HINTS, random.Random(1))
    for t in range(4):
        breaker.record(t, FAIL, retry_after=120.0)
    breaker.record(4, FAIL)
    assert breaker.state is State.OPEN
    assert breaker.open_until - breaker.opened_at >= 120.0
    capped = Breaker("Q", POLICY_FOR_HINTS, random.Random(1))
    for t in range(5):
        capped.record(t, FAIL, retry_after=10_000.0)
    assert capped.open_until - capped.opened_at == POLICY_FOR_HINTS.open_max


def test_a_success_forgets_the_retry_after_hint() -> None:
    """A hint belongs to the run of failures it came with."""
    breaker = Breaker("P", POLICY_FOR_HINTS, random.Random(1))
    breaker.record(0, FAIL, retry_after=200.0)
    breaker.record(1, OK)
    for t in range(2, 7):
        breaker.record(t, FAIL)
    assert breaker.open_until - breaker.opened_at <= POLICY_FOR_HINTS.open_base


def test_eviction_spares_closed_breakers_with_recent_failures() -> None:
    """A flood of new practice ids evicts idle healthy breakers first: a closed breaker that
    counted failures of an offline practice keeps them."""
    clock = FakeClock(0.0)
    table = BreakerTable(
        POLICY_FOR_HINTS, max_entries=10, idle=3600, clock=clock, rng=random.Random(1)
    )
    failing = table.get("FAILING")
    for _ in range(4):
        failing.record(clock.now, FAIL)
    for i in range(200):
        clock.now += 0.1
        table.get(f"NEW{i}")
    assert table.get("FAILING") is failing
    assert failing.consecutive_failures == 4


# -- budget and bulkhead -----------------------------------------------------------------


def test_retry_budget_floor_and_ratio() -> None:
    """Retries limited to 20% of requests in the window, with a floor of three."""
    budget = RetryBudget(ratio=0.2, floor=3, window=10)
    assert [budget.try_spend(0) for _ in range(4)] == [True, True, True, False]
    for _ in range(100):
        budget.record_request(1)
    granted = sum(budget.try_spend(1) for _ in range(100))
    assert granted == 20 - 3
    assert budget.try_spend(20)  # the window has moved on


def test_bulkhead_limits_per_practice_and_in_all() -> None:
    """Ten in flight per practice (case-insensitive), and a global cap; slots come back."""
    bulkhead = Bulkhead(per_practice=2, total=3)
    bulkhead.acquire("uktest1")
    bulkhead.acquire("UKTEST1")
    with pytest.raises(PracticeBusy):
        bulkhead.acquire("UkTest1")
    bulkhead.acquire(None)
    with pytest.raises(GatewayBusy):
        bulkhead.acquire("UKTEST2")
    bulkhead.release("UKTEST1")
    bulkhead.acquire("UKTEST2")
    for practice in ("UKTEST1", "UKTEST2", None):
        bulkhead.release(practice)
    assert bulkhead.inflight == 0
    assert bulkhead.practices_in_flight() == 0


# -- retry policy -------------------------------------------------------------------------

POLICY = RetryPolicy()


def verdict(method: str = "GET", reason: str = "status_503", **kw: object) -> Verdict:
    args: dict[str, object] = {
        "attempt": 1,
        "reason": reason,
        "method": method,
        "has_idempotency_key": False,
        "retry_after": None,
        "remaining": 60.0,
        "rng": random.Random(5),
    }
    args.update(kw)
    return decide(POLICY, **args)  # type: ignore[arg-type]


def test_which_outcomes_are_retried() -> None:
    """503/504/time-outs for idempotent methods; POST only with a key or if nothing was sent."""
    assert retry_reason(503, None) == "status_503"
    assert retry_reason(504, None) == "status_504"
    assert retry_reason(502, None) is None
    assert retry_reason(500, None) is None
    assert retry_reason(None, UpstreamTimeout("t")) == "timeout"
    assert retry_reason(None, UpstreamUnreachable("u", sent=False)) == "connect_error"
    assert retry_reason(None, UpstreamUnreachable("u")) == "connection_lost"
    assert verdict("GET").retry
    assert verdict("DELETE", "status_504").retry
    assert not verdict("POST").retry
    assert verdict("POST").why == "not_idempotent"
    assert verdict("POST", has_idempotency_key=True).retry
    assert not verdict("PATCH", "timeout").retry
    assert verdict("POST", "connect_error").retry
    assert not verdict("POST", "connection_lost").retry


@pytest.mark.parametrize("reason", ["status_504", "timeout", "connection_lost"])
@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_key_never_makes_a_maybe_delivered_post_repeatable(method: str, reason: str) -> None:
    """After a 504, a time-out or a connection lost after sending, a POST/PATCH may have been
    carried out: never sent again, even with an Idempotency-Key (EXACT ignores the key)."""
    assert not verdict(method, reason, has_idempotency_key=True).retry
    assert verdict(method, reason, has_idempotency_key=True).why == "not_idempotent"
    assert verdict(method, "status_503", has_idempotency_key=True).retry
    assert verdict(method, "connect_error").retry


def test_attempts_backoff_and_cap() -> None:
    """Capped exponential full jitter, checked over many draws so it can fail: each wait lies
    in [0, base x 2^(n-1)] capped, spreads over that whole range (jitter, not a constant),
    averages half of it (uniform), grows with the attempt, stops at the cap; no fourth
    attempt."""
    policy = RetryPolicy(max_attempts=10, backoff_base=1.0, backoff_max=20.0)
    rng = random.Random(42)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 20.0), (9, 20.0)]:
        waits = [
            decide(
                policy,
                attempt=attempt,
                reason="status_503",
                method="GET",
                has_idempotency_key=False,
                retry_after=None,
                remaining=1000.0,
                rng=rng,
            ).wait
            for _ in range(2000)
        ]
        assert min(waits) >= 0
        assert max(waits) <= ceiling
        assert max(waits) >= 0.95 * ceiling  # spread over the range, not a fixed wait
        assert min(waits) <= 0.05 * ceiling  # full jitter reaches down to zero
        assert 0.45 * ceiling <= sum(waits) / len(waits) <= 0.55 * ceiling
    assert verdict(attempt=3).why == "attempts"


def test_retry_after_honoured_up_to_its_cap() -> None:
    """Retry-After is waited for when it fits; beyond its cap there is no retry."""
    assert verdict(retry_after=12.0, remaining=60).wait == 12.0
    assert verdict(retry_after=301.0, remaining=1000).why == "retry_after"


def test_no_retry_that_cannot_finish_inside_the_deadline() -> None:
    """A wait that would end past the deadline (minus a minimal attempt) is not started."""
    assert verdict(retry_after=10.0, remaining=10.2).why == "deadline"
    assert verdict(retry_after=10.0, remaining=11).retry


def test_parse_retry_after() -> None:
    """Delta-seconds and HTTP-date forms; garbage is ignored."""
    now = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after("120", now.timestamp()) == 120
    assert parse_retry_after(later, now.timestamp()) == pytest.approx(90)
    assert parse_retry_after("soon", now.timestamp()) is None
    assert parse_retry_after(None, now.timestamp()) is None
