"""The status page's in-process history: buckets, rollover, percentiles, bounds and events."""

from __future__ import annotations

import math
import random
import tracemalloc

from gateway.history import (
    BUCKET_SECONDS,
    BUCKETS,
    LATENCY_BOUNDS,
    EventLog,
    History,
    Traffic,
)
from tests.fakes import FakeClock

BIN_RATIO = 2 ** (1 / 4)  # four log-spaced bins per octave


def traffic(clock: FakeClock) -> Traffic:
    return Traffic(clock, wall_clock=lambda: clock.now + 1_700_000_000)


def exact_quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_each_answer_is_counted_in_its_bucket_by_who_made_it() -> None:
    """A 5xx with a gateway reason is gateway-made, a bare 5xx is EXACT's, a 499 is a caller
    gone, and a 4xx or 2xx is only a request; each lands in the bucket of its time."""
    clock = FakeClock(now=1000.0)
    history = traffic(clock)
    history.record(200, False, 0.01)
    history.record(503, True, 0.001)  # circuit_open
    history.record(503, False, 0.2)  # EXACT's own 503
    history.record(504, True, 30.0)  # upstream_timeout
    history.record(499, True, 1.0)
    history.record(404, False, 0.01)
    history.record(405, True, 0.0)  # a gateway 4xx is the caller's problem, not an outage
    clock.advance(BUCKET_SECONDS)
    history.record(502, False, 0.05)
    series = history.snapshot()["series"]
    assert len(series["requests"]) == BUCKETS
    assert series["requests"][-2:] == [7, 1]
    assert series["gateway_errors"][-2:] == [2, 0]
    assert series["exact_errors"][-2:] == [1, 1]
    assert series["client_closed"][-2:] == [1, 0]
    window = history.snapshot()["window"]
    assert (window["requests"], window["gateway_errors"], window["exact_errors"]) == (8, 2, 2)


def test_the_last_minute_counts_the_last_six_buckets() -> None:
    """``recent``: what callers saw in about the last minute, and nothing older."""
    clock = FakeClock(now=1000.0)
    history = traffic(clock)
    for status, gateway_made in [(200, False)] * 9 + [(503, True)] * 3:
        history.record(status, gateway_made, 0.01)
    clock.advance(30)
    recent = history.snapshot()["recent"]
    assert (recent["requests"], recent["gateway_errors"]) == (12, 3)
    assert recent["seconds"] == 30.0  # the process started at 1000: no time before counts
    clock.advance(31)
    assert history.snapshot()["recent"]["requests"] == 0
    assert history.snapshot()["window"]["requests"] == 12


def test_a_bucket_15_minutes_old_is_forgotten_and_its_slot_reused_clean() -> None:
    """After 90 buckets the ring slot is reused: counts and latency start from zero."""
    clock = FakeClock(now=1000.0)
    history = traffic(clock)
    for _ in range(5):
        history.record(503, False, 5.0)
    clock.advance(BUCKETS * BUCKET_SECONDS)  # the same ring slot, 15 minutes later
    snapshot = history.snapshot()
    assert snapshot["window"]["requests"] == 0
    assert snapshot["series"]["requests"][-1] == 0
    assert snapshot["series"]["p99_ms"][-1] is None
    history.record(200, False, 0.002)
    snapshot = history.snapshot()
    assert snapshot["series"]["requests"][-1] == 1
    assert snapshot["series"]["exact_errors"][-1] == 0
    assert snapshot["window"]["p99_ms"] is not None
    assert snapshot["window"]["p99_ms"] < 3  # the 5 s answers of the old bucket are gone


def test_a_day_idle_leaves_an_empty_window() -> None:
    """Nothing from a day ago survives, however the ticks fall on the ring."""
    clock = FakeClock(now=1000.0)
    history = traffic(clock)
    for second in range(0, 900, 7):
        clock.now = 1000.0 + second
        history.record(500, False, 0.1)
    clock.advance(86_400 + 3.3)
    snapshot = history.snapshot()
    assert snapshot["window"]["requests"] == 0
    assert set(snapshot["series"]["requests"]) == {0}


def test_time_before_the_process_started_is_null_not_zero() -> None:
    """Buckets before start are null ("not running"), the first one covers only the time
    since start, the current one only the time so far."""
    clock = FakeClock(now=1004.0)
    history = traffic(clock)
    clock.advance(2.5)
    series = history.snapshot()["series"]
    assert series["requests"][:-1] == [None] * (BUCKETS - 1)
    assert series["requests"][-1] == 0
    assert series["seconds"][-1] == 2.5
    clock.advance(20)
    snapshot = history.snapshot()
    assert snapshot["series"]["seconds"][-3:] == [6.0, 10, 6.5]
    assert snapshot["running_since_unix"] == 1_700_001_004.0
    assert snapshot["now_unix"] - snapshot["start_unix"] == (BUCKETS - 1) * BUCKET_SECONDS + 6.5


def test_percentiles_are_within_one_bin_above_the_true_value() -> None:
    """p50 and p99 from the histogram are never below the true percentile and at most one
    bin (a factor 2^(1/4)) above it, per bucket and over the window."""
    clock = FakeClock(now=1000.0)
    history = traffic(clock)
    rng = random.Random(7)
    everything: list[float] = []
    for _ in range(6):
        samples = [10 ** rng.uniform(-3.5, 1.5) for _ in range(2000)]  # 0.3 ms to 30 s
        for sample in samples:
            history.record(200, False, sample)
        everything += samples
        snapshot = history.snapshot()
        for q, key in ((0.5, "p50_ms"), (0.99, "p99_ms")):
            true = exact_quantile(samples, q) * 1000
            assert true <= snapshot["series"][key][-1] <= true * BIN_RATIO * 1.000001
        clock.advance(BUCKET_SECONDS)
    window = history.snapshot()["window"]
    for q, key in ((0.5, "p50_ms"), (0.99, "p99_ms")):
        true = exact_quantile(everything, q) * 1000
        assert true <= window[key] <= true * BIN_RATIO * 1.000001


def test_worst_durations_are_counted_not_raised() -> None:
    """Zero, negative, NaN, infinite and absurdly long durations are counted: the first
    three in the lowest bin, the last two as "at least the last bound"."""
    clock = FakeClock(now=1000.0)
    history = traffic(clock)
    for seconds in (0.0, -5.0, float("nan")):
        history.record(200, False, seconds)
    assert history.snapshot()["window"]["p99_ms"] == round(LATENCY_BOUNDS[0] * 1000, 3)
    for seconds in (float("inf"), 1e12, 1e12):
        history.record(200, False, seconds)
    window = history.snapshot()["window"]
    assert window["requests"] == 6
    assert window["p99_ms"] == round(LATENCY_BOUNDS[-1] * 1000, 3)
    assert LATENCY_BOUNDS[-1] > 600  # beyond any deadline the settings allow by default


def test_recording_allocates_nothing_that_stays() -> None:
    """The hot path: 20,000 answers (several buckets, every status class) leave the traced
    memory where it was; memory is fixed when the history is built."""
    clock = FakeClock(now=1000.0)
    history = traffic(clock)
    statuses = (200, 503, 499, 404, 504)
    for i in range(1000):  # warm every slot and bin the loop below touches
        clock.now = 1000.0 + i
        history.record(statuses[i % 5], bool(i % 2), 0.0001 * (i % 400))
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(20_000):
            clock.now = 2000.0 + i / 10
            history.record(statuses[i % 5], bool(i % 2), 0.0001 * (i % 400))
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 4096


def test_event_logs_keep_the_newest_few_newest_first() -> None:
    """Token fetches and breaker changes are kept newest first, bounded, stamped with the
    wall clock."""
    wall = [1_700_000_000.0]
    log = EventLog(kept=3, wall_clock=lambda: wall[0])
    for i in range(10):
        wall[0] += 1
        log.add(result=f"r{i}")
    assert [(e["result"], e["at_unix"]) for e in log.recent()] == [
        ("r9", 1_700_000_010.0),
        ("r8", 1_700_000_009.0),
        ("r7", 1_700_000_008.0),
    ]
    history = History(FakeClock(), lambda: wall[0], events_kept=2)
    history.token_changed("success", 3599.96)
    history.token_changed("timeout", None)
    history.token_changed("rejected_by_exact", None)
    history.upstream_breaker_changed("open", "correlated", 30.04)
    snapshot = history.snapshot()
    assert [e["result"] for e in snapshot["token_events"]] == ["rejected_by_exact", "timeout"]
    assert snapshot["upstream_breaker_events"] == [
        {"at_unix": wall[0], "state": "open", "cause": "correlated", "open_for_seconds": 30.0}
    ]
