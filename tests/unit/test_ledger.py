"""The availability ledger: states, periods, hourly counts, bounds, CSV, with a fake clock."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from typing import Any

import pytest

from gateway.ledger import (
    ANSWERS,
    CSV_COLUMNS,
    Answer,
    Ledger,
    LedgerPolicy,
    PracticeState,
    classify,
)
from tests.fakes import FakeClock

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z


def ledger(**policy: float) -> tuple[Ledger, FakeClock]:
    clock = FakeClock(T0)
    return Ledger(LedgerPolicy(**policy), clock), clock  # type: ignore[arg-type]


def view(book: Ledger, practice: str) -> dict[str, object]:
    found = book.get(practice)
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (200, Answer.OK),
        (204, Answer.OK),
        (400, Answer.CLIENT_ERROR),
        (404, Answer.CLIENT_ERROR),
        (502, Answer.BAD_GATEWAY),
        (503, Answer.UNAVAILABLE),
        (504, Answer.GATEWAY_TIMEOUT),
        (500, Answer.OTHER),
        (302, Answer.OTHER),
        (101, Answer.OTHER),
        (999, Answer.OTHER),
    ],
)
def test_classify(status: int, answer: Answer) -> None:
    """Statuses map to the documented answer classes."""
    assert classify(status) is answer


def test_breaker_drives_unavailability_periods() -> None:
    """Unknown until an answer; failures alone leave the state to the breaker; the breaker
    opening starts a period caused by the last failure kind, closing ends it."""
    book, clock = ledger()
    book.record_attempt("UKOFFLINE1", Answer.OK, 0.1)
    assert view(book, "UKOFFLINE1")["state"] == "available"
    clock.now += 60
    book.record_attempt("UKOFFLINE1", Answer.UNAVAILABLE)
    got = view(book, "UKOFFLINE1")
    assert (got["state"], got["last_failure_kind"]) == ("available", "503")
    assert got["last_failure"] == "2026-05-28T20:27:40Z"
    book.breaker_opened("UKOFFLINE1")
    book.breaker_opened("UKOFFLINE1")  # repeated: still one period
    got = view(book, "UKOFFLINE1")
    assert (got["state"], got["since"]) == ("unavailable", "2026-05-28T20:27:40Z")
    clock.now += 90
    book.record_attempt("UKOFFLINE1", Answer.OK, 0.1)  # the probe that closes it
    assert view(book, "UKOFFLINE1")["state"] == "unavailable"
    book.breaker_closed("UKOFFLINE1")
    got = view(book, "UKOFFLINE1")
    assert (got["state"], got["since"]) == ("available", "2026-05-28T20:29:10Z")
    assert got["unavailable_periods"] == [
        {
            "start": "2026-05-28T20:27:40Z",
            "end": "2026-05-28T20:29:10Z",
            "cause": "503",
            "seconds": 90.0,
        }
    ]


def test_open_period_has_no_end_and_counts_seconds_so_far() -> None:
    """A period still open shows end None and its length up to now; an explicit cause wins."""
    book, clock = ledger()
    book.breaker_opened("UKTIMEOUT1", cause="504")
    clock.now += 30
    periods: Any = view(book, "UKTIMEOUT1")["unavailable_periods"]
    (period,) = periods
    assert period == {"start": "2026-05-28T20:26:40Z", "end": None, "cause": "504", "seconds": 30.0}


def test_slow_state_with_hysteresis() -> None:
    """Smoothed latency at or over slow_seconds is slow; back below 80% of it is available."""
    book, _ = ledger(slow_seconds=1.0)
    book.record_attempt("UKSLOW1", Answer.OK, 0.2)
    assert view(book, "UKSLOW1")["state"] == "available"
    for _ in range(10):
        book.record_attempt("UKSLOW1", Answer.OK, 2.0)
    assert view(book, "UKSLOW1")["state"] == "slow"
    book.record_attempt("UKSLOW1", Answer.OK, 0.1)  # one quick answer: still slow on average
    assert view(book, "UKSLOW1")["state"] == "slow"
    for _ in range(10):
        book.record_attempt("UKSLOW1", Answer.OK, 0.1)
    assert view(book, "UKSLOW1")["state"] == "available"
    before = view(book, "UKSLOW1")["latency_seconds"]
    book.record_attempt("UKSLOW1", Answer.OK, -5.0)  # nonsense durations are ignored
    assert view(book, "UKSLOW1")["latency_seconds"] == before


def test_pause_takes_precedence_and_has_its_own_period() -> None:
    """Paused beats unavailable; the pause and the breaker each end their own period."""
    book, clock = ledger()
    book.record_attempt("UKTEST1", Answer.OK)
    book.breaker_opened("UKTEST1", cause="timeout")
    clock.now += 10
    book.pause_started("UKTEST1", until=T0 + 3600, note="server move")
    got = view(book, "UKTEST1")
    assert got["state"] == "paused"
    assert got["pause"] == {"until": "2026-05-28T21:26:40Z", "note": "server move"}
    clock.now += 10
    book.pause_started("UKTEST1", until=T0 + 7200, note="longer")  # extended: same period
    book.breaker_closed("UKTEST1")
    assert view(book, "UKTEST1")["state"] == "paused"
    clock.now += 10
    book.pause_ended("UKTEST1")
    book.pause_ended("UKTEST1")  # twice, or for an unknown practice: nothing happens
    book.pause_ended("NOSUCH")
    got = view(book, "UKTEST1")
    assert (got["state"], got["pause"]) == ("available", None)
    assert [(p["cause"], p["seconds"]) for p in got["unavailable_periods"]] == [  # type: ignore[attr-defined]
        ("timeout", 20.0),
        ("paused", 20.0),
    ]
    assert book.get("NOSUCH") is None


def test_periods_are_bounded_newest_kept() -> None:
    """Only the last periods_kept periods stay."""
    book, clock = ledger(periods_kept=3)
    for n in range(7):
        clock.now = T0 + n * 100
        book.breaker_opened("UKFLAKY1", cause=f"c{n}")
        book.breaker_closed("UKFLAKY1")
    periods = view(book, "UKFLAKY1")["unavailable_periods"]
    assert [p["cause"] for p in periods] == ["c4", "c5", "c6"]  # type: ignore[attr-defined]


def test_hourly_ring_keeps_exactly_the_last_24_hours() -> None:
    """Counts land in their UTC hour; an hour 24 h old drops out; the ring reuses slots."""
    book, clock = ledger()
    clock.now = T0  # 20:26:40 UTC
    book.record_attempt("UKTEST1", Answer.OK)
    book.record_attempt("UKTEST1", Answer.TIMEOUT)
    clock.now += 3600
    for answer in (Answer.OK, Answer.CLIENT_ERROR, Answer.BAD_GATEWAY, Answer.GATEWAY_TIMEOUT):
        book.record_attempt("UKTEST1", answer)
    hourly = view(book, "UKTEST1")["hourly"]
    assert len(hourly) == 24  # type: ignore[arg-type]
    assert hourly[-1]["hour"] == "2026-05-28T21:00:00Z"  # type: ignore[index]
    assert hourly[-2] == {"hour": "2026-05-28T20:00:00Z"} | {a.value: 0 for a in ANSWERS} | {  # type: ignore[index]
        "2xx": 1,
        "timeout": 1,
    }
    assert view(book, "UKTEST1")["last_24h"] == {a.value: 0 for a in ANSWERS} | {
        "2xx": 2, "4xx": 1, "502": 1, "504": 1, "timeout": 1,
    }  # fmt: skip
    clock.now += 23 * 3600  # the 20:00 hour is now 24 h old; its slot is reused
    book.record_attempt("UKTEST1", Answer.UNAVAILABLE)
    assert view(book, "UKTEST1")["last_24h"] == {a.value: 0 for a in ANSWERS} | {
        "2xx": 1, "4xx": 1, "502": 1, "504": 1, "503": 1,
    }  # fmt: skip
    clock.now += 48 * 3600  # two idle days: everything is stale
    assert set(view(book, "UKTEST1")["last_24h"].values()) == {0}  # type: ignore[attr-defined]


def test_clock_stepping_back_still_counts() -> None:
    """A wall clock set back by hours neither raises nor loses the count."""
    book, clock = ledger()
    book.record_attempt("UKTEST1", Answer.OK)
    clock.now -= 5 * 3600
    book.record_attempt("UKTEST1", Answer.OK)
    clock.now += 5 * 3600
    assert view(book, "UKTEST1")["last_24h"]["2xx"] == 2  # type: ignore[index]


def test_hourly_counts_saturate_instead_of_overflowing() -> None:
    """A cell at the array's maximum stays there (no OverflowError mid-request); the others
    keep counting. (The cell is set near its maximum directly: 2**32 attempts are too many.)"""
    book, _ = ledger()
    book.record_attempt("UKTEST1", Answer.OK)
    counts = book._seen["UKTEST1"].counts  # private: no public way to 4 billion
    cell = counts.index(1)
    counts[cell] = 2**32 - 2
    for _ in range(3):
        book.record_attempt("UKTEST1", Answer.OK)
    book.record_attempt("UKTEST1", Answer.CLIENT_ERROR)
    assert counts[cell] == 2**32 - 1
    assert view(book, "UKTEST1")["last_24h"]["4xx"] == 1  # type: ignore[index]


def test_unreachable_host_is_counted_but_not_blamed_on_the_practice() -> None:
    """An EXACT host failure is partner-wide: counted, yet no failure time, no state change."""
    book, _ = ledger()
    book.record_attempt("UKTEST1", Answer.UNREACHABLE)
    got = view(book, "UKTEST1")
    assert (got["state"], got["last_failure"], got["last_24h"]["unreachable"]) == (  # type: ignore[index]
        "unknown",
        None,
        1,
    )


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("13.856", "13.856"),
        (" 13.842.1 ", "13.842.1"),
        ("EXACT v13.860", None),
        ("1" * 10_000, None),
        (None, None),
    ],
)
def test_version_is_kept_only_when_it_parses(given: str | None, stored: str | None) -> None:
    """pmsVersion comes from upstream: only a dotted version is kept, bounded in length."""
    book, _ = ledger()
    book.set_version("UKOLD1", given)
    assert view(book, "UKOLD1")["pms_version"] == stored


def test_subscriptions_added_removed_and_forgotten() -> None:
    """The first list creates entries quietly; later lists report who came and who left,
    forget those who left, and mark merely-seen practices unsubscribed."""
    book, _ = ledger()
    book.record_attempt("UKSEEN1", Answer.OK)
    assert view(book, "UKSEEN1")["subscribed"] is None  # no list known yet
    first = book.set_subscriptions(["UKTEST1", "UKTEST2"])
    assert (first.added, first.removed) == ((), ())
    assert view(book, "UKTEST1")["state"] == "unknown"
    assert view(book, "UKTEST1")["subscribed"] is True
    assert view(book, "UKSEEN1")["subscribed"] is False
    book.record_attempt("uktest2", Answer.OK)  # ids are case-insensitive
    change = book.set_subscriptions(["UKTEST2", "UKSEEN1", "UKNEW1"])
    assert (set(change.added), change.removed) == ({"UKSEEN1", "UKNEW1"}, ("UKTEST1",))
    assert book.get("UKTEST1") is None
    assert view(book, "UKTEST2")["state"] == "available"
    assert view(book, "UKSEEN1")["subscribed"] is True
    book.record_attempt("UKLATE1", Answer.OK)
    assert view(book, "UKLATE1")["subscribed"] is False
    book.forget("ukseen1")
    assert book.get("UKSEEN1") is None
    assert len(book) == 3


def test_a_flood_of_unknown_ids_never_evicts_subscribed_practices() -> None:
    """Beyond max_entries the least recently seen unsubscribed practice goes first."""
    book, _ = ledger(max_entries=5)
    book.set_subscriptions(["SUB1", "SUB2"])
    for n in range(100):
        book.record_attempt(f"FLOOD{n}", Answer.OK)
    assert len(book) == 5
    held = {p["practice_id"] for p in book.snapshot()["practices"]}
    assert held == {"SUB1", "SUB2", "FLOOD97", "FLOOD98", "FLOOD99"}
    book.set_subscriptions([f"SUB{n}" for n in range(10)])  # more subscribed than room
    assert len(book) == 5


def test_snapshot_is_json_with_exactly_the_documented_fields() -> None:
    """No field beyond the documented ones (no path, query, body or patient id); state counts
    cover every state; hourly buckets only on request."""
    book, _ = ledger()
    book.record_attempt("UKTEST1", Answer.OK, 0.2)
    book.set_subscriptions(["UKTEST1", "UKTEST2"])
    snap = json.loads(json.dumps(book.snapshot()))
    assert set(snap) == {"generated_at", "max_entries", "states", "practices"}
    assert snap["states"] == {s.value: 0 for s in PracticeState} | {"available": 1, "unknown": 1}
    assert set(snap["practices"][0]) == {
        "practice_id", "state", "since", "subscribed", "pms_version", "last_success",
        "last_failure", "last_failure_kind", "latency_seconds", "pause", "last_24h",
        "unavailable_periods",
    }  # fmt: skip
    assert "hourly" in book.snapshot(hourly=True)["practices"][0]


def test_csv_is_rfc_4180_and_safe_in_a_spreadsheet() -> None:
    """Header plus one row per practice, CRLF line ends, quoting for commas, quotes and new
    lines, and a note that looks like a formula is defused."""
    book, _ = ledger()
    book.record_attempt("UKTEST1", Answer.OK)
    book.pause_started("UKTEST1", until=T0 + 60, note='=HYPERLINK("x"), "moved"\nline two')
    book.breaker_opened("UKOFFLINE1", cause="503")
    text = book.to_csv()
    assert text.endswith("\r\n")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == list(CSV_COLUMNS)
    assert len(rows) == 3
    assert all(len(row) == len(CSV_COLUMNS) for row in rows)
    first = dict(zip(rows[0], rows[1], strict=True))
    assert first["practice_id"] == "UKTEST1"
    assert first["state"] == "paused"
    assert first["pause_note"] == '\'=HYPERLINK("x"), "moved"\nline two'
    assert first["count_24h_2xx"] == "1"
    second = dict(zip(rows[0], rows[2], strict=True))
    assert (second["state"], second["last_unavailable_cause"]) == ("unavailable", "503")
    assert second["last_unavailable_end"] == ""
    assert second["subscribed"] == ""


def test_memory_for_10000_practices_stays_bounded() -> None:
    """10,000 distinct ids against a bound of 2,000 entries: held entries and memory stay
    flat once the bound is reached."""
    book, clock = ledger(max_entries=2000)
    tracemalloc.start()
    for i in range(2000):
        book.record_attempt(f"UKP{i:05d}", Answer.OK, 0.1)
    at_bound = tracemalloc.get_traced_memory()[0]
    for i in range(2000, 10_000):
        clock.now += 1
        answer = Answer.UNAVAILABLE if i % 10 == 0 else Answer.OK
        book.record_attempt(f"UKP{i:05d}", answer, 0.1)
        if i % 10 == 0:
            book.breaker_opened(f"UKP{i:05d}")
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(
        f"ledger: 2,000 ids {at_bound:,} bytes, 10,000 ids {after:,} bytes"
        f" ({len(book)} entries held, {after // len(book):,} bytes each)"
    )
    assert len(book) == 2000
    assert after < at_bound * 1.2
