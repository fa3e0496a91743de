"""Resilience.decide, the README's resilience table as one function, row by row.

Each case is one attempt's Outcome and the request's state, decided with a fake clock; the
test checks the decision (answer, refuse, retry, replay), its reason, and what the practice
breaker and the partner-wide breaker were told (failure, success or nothing).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from gateway.metrics import build_metrics
from gateway.outcome import Outcome, OutcomeKind, RetryReason, SkipReason
from gateway.resilience import Resilience, ResiliencePolicy, State
from gateway.resilience.breaker import BreakerPolicy
from gateway.resilience.decision import Action
from tests.fakes import FakeClock

PRACTICE = "UKDECIDE1"


@dataclass(frozen=True)
class Req:
    """The request's state as decide() reads it."""

    method: str = "GET"
    attempts: int = 1
    deadline: float = 1060.0  # the fake clock starts at 1000: a minute left
    keyed: bool = False
    replayable: bool = True
    token_replaced: bool = False
    caller_stalled: bool = False


def resilience(clock: FakeClock, **policy: object) -> Resilience:
    metrics = build_metrics("test", CollectorRegistry())
    return Resilience(
        ResiliencePolicy(**policy),  # type: ignore[arg-type]
        metrics,
        clock=clock,
        rng=random.Random(3),
    )


def answer(status: int, retry_after: str | None = None) -> Outcome:
    return Outcome.answered(object(), status, retry_after)


def failure(kind: OutcomeKind, sent: bool = True) -> Outcome:
    return Outcome(kind, sent, detail=kind.value)


K = OutcomeKind
F, S, N = "failure", "success", "nothing"

# (row of the README table, outcome, request, action, retry or skip reason, gateway reason,
#  what the practice breaker heard, what the partner-wide breaker heard)
ROWS = [
    ("503 GET", answer(503), Req(), Action.RETRY, RetryReason.STATUS_503, None, F, S),
    ("503 PUT", answer(503), Req("PUT"), Action.RETRY, RetryReason.STATUS_503, None, F, S),
    (
        "503 POST unkeyed",
        answer(503),
        Req("POST"),
        Action.ANSWER,
        SkipReason.NOT_IDEMPOTENT,
        None,
        F,
        S,
    ),
    (
        "503 POST keyed",
        answer(503),
        Req("POST", keyed=True),
        Action.RETRY,
        "status_503",
        None,
        F,
        S,
    ),
    ("504 GET", answer(504), Req(), Action.RETRY, RetryReason.STATUS_504, None, F, S),
    (
        "504 PATCH keyed",
        answer(504),
        Req("PATCH", keyed=True),
        Action.ANSWER,
        SkipReason.NOT_IDEMPOTENT,
        None,
        F,
        S,
    ),
    (
        "no answer in time, DELETE",
        failure(K.NO_ANSWER_IN_TIME),
        Req("DELETE"),
        Action.RETRY,
        RetryReason.TIMEOUT,
        None,
        F,
        N,
    ),
    (
        "no answer in time, POST keyed",
        failure(K.NO_ANSWER_IN_TIME),
        Req("POST", keyed=True),
        Action.REFUSE,
        SkipReason.NOT_IDEMPOTENT,
        "upstream_timeout",
        F,
        N,
    ),
    ("502", answer(502), Req(), Action.ANSWER, None, None, S, S),
    ("200", answer(200), Req("POST"), Action.ANSWER, None, None, S, S),
    ("304", answer(304), Req(), Action.ANSWER, None, None, S, S),
    ("404", answer(404), Req(), Action.ANSWER, None, None, S, S),
    ("401 first", answer(401), Req(), Action.REPLAY, None, None, S, S),
    (
        "401 after a new token",
        answer(401),
        Req(token_replaced=True),
        Action.ANSWER,
        None,
        None,
        S,
        S,
    ),
    (
        "cannot connect, POST",
        failure(K.CONNECT_FAILED, sent=False),
        Req("POST"),
        Action.RETRY,
        RetryReason.CONNECT_ERROR,
        None,
        N,
        F,
    ),
    (
        "connect time-out, PATCH",
        failure(K.CONNECT_TIMEOUT, sent=False),
        Req("PATCH"),
        Action.RETRY,
        RetryReason.CONNECT_ERROR,
        None,
        N,
        F,
    ),
    (
        "lost after sending, GET",
        failure(K.LOST_AFTER_SEND),
        Req(),
        Action.RETRY,
        RetryReason.CONNECTION_LOST,
        None,
        N,
        F,
    ),
    (
        "lost after sending, POST keyed",
        failure(K.LOST_AFTER_SEND),
        Req("POST", keyed=True),
        Action.REFUSE,
        SkipReason.NOT_IDEMPOTENT,
        "upstream_unreachable",
        N,
        F,
    ),
    (
        "unusable answer",
        failure(K.BAD_RESPONSE),
        Req(),
        Action.REFUSE,
        None,
        "upstream_bad_response",
        N,
        F,
    ),
    (
        "the caller's body stalls",
        failure(K.NO_ANSWER_IN_TIME),
        Req("PUT", caller_stalled=True),
        Action.REFUSE,
        None,
        "request_timeout",
        N,
        N,
    ),
    (
        "the caller's deadline",
        failure(K.CUT_BY_DEADLINE),
        Req(),
        Action.REFUSE,
        None,
        "deadline_exceeded",
        N,
        N,
    ),
    (
        "a request that cannot be sent as it is",
        failure(K.INVALID_REQUEST, sent=False),
        Req(),
        Action.REFUSE,
        None,
        "bad_request",
        N,
        N,
    ),
]


def heard(calls: int, failures: int) -> str:
    if calls == 0:
        return N
    return F if failures else S


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_one_row_of_the_table(
    row: tuple[str, Outcome, Req, Action, str | None, str | None, str, str],
) -> None:
    _, outcome, req, action, why, error, practice, partner = row
    clock = FakeClock()
    res = resilience(clock)
    ticket = res.admit(PRACTICE)
    decision = res.decide(ticket, outcome, req)
    assert decision.action is action
    assert (decision.retry or decision.skipped) == why
    assert (decision.error.reason if decision.error is not None else None) == error
    assert heard(*res.breakers.get(PRACTICE).window_counts(clock.now)) == practice
    assert heard(*res.upstream.window_counts(clock.now)) == partner
    if action is Action.RETRY:
        assert 0 <= decision.wait <= 1.0  # first retry: full jitter under the 1 s base


@pytest.mark.parametrize(
    ("outcome", "partner"),
    [(answer(503), F), (answer(504), F), (answer(200), S), (answer(502), S)],
    ids=["503", "504", "200", "502"],
)
def test_a_partner_wide_path_concerns_only_the_partner_wide_breaker(
    outcome: Outcome, partner: str
) -> None:
    """503/504 on a path without a practice (ListActiveSubscriptions) fail the EXACT API."""
    clock = FakeClock()
    res = resilience(clock)
    ticket = res.admit(None)
    res.decide(ticket, outcome, Req())
    assert heard(*res.upstream.window_counts(clock.now)) == partner


def test_the_attempt_that_opens_the_breaker_hears_its_own_outcome() -> None:
    """A 503 that opens the practice breaker is answered (EXACT's own 503), not retried, and
    its Retry-After floors the breaker's open time."""
    clock = FakeClock()
    res = resilience(clock, breaker=BreakerPolicy(consecutive=1, open_base=5, open_max=600))
    decision = res.decide(res.admit(PRACTICE), answer(503, "120"), Req())
    assert decision.action is Action.ANSWER
    assert decision.skipped is SkipReason.BREAKER
    breaker = res.breakers.get(PRACTICE)
    assert breaker.state is State.OPEN
    assert breaker.open_until - clock.now >= 120


def test_a_failure_that_opens_the_partner_wide_breaker_is_refused_with_its_own_error() -> None:
    clock = FakeClock()
    res = resilience(clock, upstream=BreakerPolicy(consecutive=1, min_calls=2**31))
    decision = res.decide(res.admit(PRACTICE), failure(K.CONNECT_FAILED, sent=False), Req())
    assert decision.action is Action.REFUSE
    assert decision.skipped is SkipReason.BREAKER
    assert decision.error is not None
    assert decision.error.reason == "upstream_unreachable"


@pytest.mark.parametrize(
    ("req", "outcome", "skipped"),
    [
        (Req(attempts=3), answer(503), SkipReason.ATTEMPTS),
        (Req(replayable=False), answer(503), SkipReason.BODY_STREAMED),
        (Req(deadline=1000.4), answer(503), SkipReason.DEADLINE),
        (Req(), answer(503, "301"), SkipReason.RETRY_AFTER),
    ],
    ids=["attempts", "body streamed", "deadline", "retry-after beyond its cap"],
)
def test_rules_that_stop_a_retry(req: Req, outcome: Outcome, skipped: SkipReason) -> None:
    clock = FakeClock()
    res = resilience(clock)
    decision = res.decide(res.admit(PRACTICE), outcome, req)
    assert decision.action is Action.ANSWER
    assert decision.skipped is skipped


def test_retry_after_sets_the_wait_when_longer_than_the_backoff() -> None:
    clock = FakeClock()
    res = resilience(clock)
    decision = res.decide(res.admit(PRACTICE), answer(503, "7"), Req())
    assert decision.action is Action.RETRY
    assert decision.wait == 7.0


def test_the_budget_stops_retries_and_says_so_in_the_detail() -> None:
    """With the budget spent, a failure is the caller's own last outcome, with the reason."""
    clock = FakeClock()
    res = resilience(clock, budget_floor=1, budget_ratio=0.0)
    first = res.decide(res.admit("UKA1"), failure(K.LOST_AFTER_SEND), Req())
    assert first.action is Action.RETRY
    second = res.decide(res.admit("UKB1"), failure(K.LOST_AFTER_SEND), Req())
    assert second.action is Action.REFUSE
    assert second.skipped is SkipReason.BUDGET
    assert second.error is not None
    assert "budget" in second.error.detail
    clock.advance(11)  # the window moves on: the budget is back
    third = res.decide(res.admit("UKC1"), failure(K.LOST_AFTER_SEND), Req())
    assert third.action is Action.RETRY


def test_caller_slowness_frees_a_probe_slot_and_never_counts() -> None:
    """A half-open breaker's probe that stalled on the caller's body is released, and the
    next request can probe."""
    clock = FakeClock()
    policy = BreakerPolicy(consecutive=1, open_base=1, open_max=1, jitter=0)
    res = resilience(clock, breaker=policy)
    res.decide(res.admit(PRACTICE), answer(503), Req())
    clock.advance(2)
    probe = res.admit(PRACTICE)
    assert probe.practice_probe
    stalled = res.decide(probe, failure(K.NO_ANSWER_IN_TIME), Req(caller_stalled=True))
    assert stalled.error is not None
    assert stalled.error.reason == "request_timeout"
    assert res.admit(PRACTICE).practice_probe  # the slot was given back, not spent


def test_retries_and_skips_are_counted_with_their_enum_labels() -> None:
    clock = FakeClock()
    res = resilience(clock)
    res.decide(res.admit(PRACTICE), answer(503), Req())
    res.decide(res.admit(PRACTICE), answer(503), Req("POST"))
    registry = res._metrics.registry
    assert registry.get_sample_value("exact_gateway_retries_total", {"reason": "status_503"}) == 1
    skipped = registry.get_sample_value(
        "exact_gateway_retries_skipped_total", {"reason": "not_idempotent"}
    )
    assert skipped == 1


def test_streak_listeners_hear_exacts_own_503_504_and_the_success_after_them() -> None:
    """The fleet counts EXACT's verdicts only: a 503/504 on a closed breaker is told, our own
    time-outs, connection errors, 502s and a caller's stall are not; a success is told only
    after failures; a probe is never told (the breaker already left closed)."""
    clock = FakeClock()
    policy = BreakerPolicy(consecutive=6, min_calls=1000, open_base=1, jitter=0)
    res = resilience(clock, breaker=policy)
    heard: list[tuple[str, int | None]] = []
    res.watch_streaks(lambda breaker, status: heard.append((breaker.key, status)))
    res.decide(res.admit(PRACTICE), answer(200), Req())
    assert heard == []  # a success without failures before it costs nothing
    for outcome in (
        failure(K.CONNECT_FAILED, sent=False),
        failure(K.CONNECT_TIMEOUT, sent=False),
        failure(K.LOST_AFTER_SEND),
        failure(K.BAD_RESPONSE),
        answer(502),
    ):
        res.decide(res.admit(PRACTICE), outcome, Req())
    res.decide(res.admit(PRACTICE), failure(K.NO_ANSWER_IN_TIME), Req(caller_stalled=True))
    assert heard == []
    res.decide(res.admit(PRACTICE), answer(503), Req())
    res.decide(res.admit(PRACTICE), answer(504), Req())
    res.decide(res.admit(PRACTICE), failure(K.NO_ANSWER_IN_TIME), Req())  # ours: not told
    assert heard == [(PRACTICE, 503), (PRACTICE, 504)]
    res.decide(res.admit(PRACTICE), answer(200), Req())
    assert heard[-1] == (PRACTICE, None)
    heard.clear()
    for _ in range(6):
        res.decide(res.admit(PRACTICE), answer(503), Req())
    assert res.breakers.get(PRACTICE).state is State.OPEN
    assert len(heard) == 6
    clock.advance(2)
    probe = res.admit(PRACTICE)
    assert probe.practice_probe
    res.decide(probe, answer(503), Req())
    assert len(heard) == 6  # the failed probe is the breaker's business, not the count's
