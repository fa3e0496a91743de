"""Operator pauses: strict parsing of the pauses file, the book that keeps the last valid
content, start/end events, and the file watcher on a real file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.pauses import (
    MAX_FILE_BYTES,
    NOTE_MAX_CHARS,
    PauseBook,
    PauseFileError,
    ReloadResult,
    encode_entry,
    parse_entry,
    parse_pauses,
    watch_file,
)

NOW = 1_780_000_000.0  # 2026-05-28T20:26:40Z
LATER = "2026-12-01T06:00:00Z"
LATER_S = 1_796_104_800.0


def document(practices: dict[str, Any]) -> bytes:
    return json.dumps({"practices": practices}).encode()


def test_the_documented_example_parses() -> None:
    """The README's example: one practice, its end time and its note."""
    entries = parse_pauses(
        b'{"practices": {"UKTEST1": '
        b'{"pause_until": "2026-12-01T06:00:00Z", "note": "server move"}}}'
    )
    assert list(entries) == ["UKTEST1"]
    assert (entries["UKTEST1"].until, entries["UKTEST1"].note) == (LATER_S, "server move")


@pytest.mark.parametrize(
    "until",
    [
        "2026-12-01T06:00:00Z",
        "2026-12-01t06:00:00z",
        "2026-12-01 06:00:00Z",
        "2026-12-01T07:00:00+01:00",
        "2026-12-01T01:30:00-04:30",
        "2026-12-01T06:00:00.000000001Z",
    ],
)
def test_rfc_3339_times_with_any_offset(until: str) -> None:
    """Z, lower-case t/z, a space, offsets and long fractions name the same instant."""
    entries = parse_pauses(document({"UKTEST1": {"pause_until": until}}))
    assert entries["UKTEST1"].until == pytest.approx(LATER_S)
    assert entries["UKTEST1"].note == ""


def test_empty_practices_and_a_utf8_bom_are_fine() -> None:
    """`{"practices": {}}` means no pauses; a byte-order mark from an editor is accepted."""
    assert parse_pauses(b'{"practices": {}}') == {}
    assert list(parse_pauses(b"\xef\xbb\xbf" + document({"A1": {"pause_until": LATER}}))) == ["A1"]


def test_thousands_of_entries() -> None:
    """5,000 pauses parse (well inside the 1 MiB limit)."""
    entries = parse_pauses(document({f"UKP{i:05d}": {"pause_until": LATER} for i in range(5000)}))
    assert len(entries) == 5000


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty"),
        (b"  \n", "empty"),
        (b'{"practices": {"A": {"pause_until": "x"}}', "invalid JSON at line 1 column 42"),
        (
            b'{\n  "practices": {\n    "A": {"pause_until": ' + b'"2026-12-01T06:00:00Z",}}}',
            "line 3",
        ),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"practices": {"A": {"pause_until": NaN}}}', "NaN"),
        (b'{"practices": {"A": {"pause_until": ' + b"9" * 5000 + b"}}}", "invalid JSON"),
        (b'{"practices": {}, "practices": {}}', "appears twice"),
        (b"[]", 'one key "practices"'),
        (b'{"practices": {}, "extra": 1}', 'one key "practices"'),
        (b'{"Practices": {}}', 'one key "practices"'),
        (b'{"practices": []}', "must be an object"),
        (document({"-bad": {"pause_until": LATER}}), "'-bad' is not a practice id"),
        (document({"A" * 65: {"pause_until": LATER}}), "is not a practice id"),
        (document({"UK/1": {"pause_until": LATER}}), "is not a practice id"),
        (document({"": {"pause_until": LATER}}), "is not a practice id"),
        (
            document({"UKTEST1": {"pause_until": LATER}, "uktest1": {"pause_until": LATER}}),
            "practice uktest1 appears twice",
        ),
        (document({"A1": "2026-12-01T06:00:00Z"}), "practice A1: expected an object"),
        (document({"A1": {}}), "practice A1: pause_until is required"),
        (document({"A1": {"pause_until": LATER, "until": LATER}}), "unknown key 'until'"),
        (document({"A1": {"pause_until": 1796104800}}), "RFC 3339"),
        (document({"A1": {"pause_until": "2026-12-01T06:00:00"}}), "with an offset"),
        (document({"A1": {"pause_until": "2026-12-01"}}), "RFC 3339"),
        (document({"A1": {"pause_until": "2026-02-30T06:00:00Z"}}), "not a real time"),
        (document({"A1": {"pause_until": "2026-12-01T25:00:00Z"}}), "not a real time"),
        (document({"A1": {"pause_until": "0000-01-01T00:00:00Z"}}), "not a real time"),
        (document({"A1": {"pause_until": "2026-12-01T06:00:00Z\n"}}), "RFC 3339"),
        (document({"A1": {"pause_until": LATER, "note": 5}}), "note must be text"),
        (document({"A1": {"pause_until": LATER, "note": "x" * 201}}), "note must be text"),
        (document({"A1": {"pause_until": LATER, "note": "a\nb"}}), "control characters"),
        (document({"A1": {"pause_until": LATER, "note": "a\u2028b"}}), "control characters"),
        (document({"A1": {"pause_until": LATER, "note": None}}), "note must be text"),
    ],
)
def test_malformed_files_are_refused_in_one_line(raw: bytes, message: str) -> None:
    """Every kind of bad file is refused with a one-line message naming the problem."""
    with pytest.raises(PauseFileError, match=None) as caught:
        parse_pauses(raw)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
    assert len(text) < 200


def test_a_huge_file_is_refused_before_parsing() -> None:
    """Over 1 MiB is refused by size (a valid document or not)."""
    padding = " " * MAX_FILE_BYTES
    with pytest.raises(PauseFileError, match="larger than 1048576 bytes"):
        parse_pauses(b'{"practices": {}}' + padding.encode())
    assert NOTE_MAX_CHARS == 200


def test_past_times_are_valid_but_not_in_force() -> None:
    """A pause that already ended does not invalidate the file; it is counted as expired."""
    book = PauseBook()
    result = book.reload(
        document({"OLD1": {"pause_until": "2020-01-01T00:00:00Z"}, "NEW1": {"pause_until": LATER}}),
        NOW,
    )
    assert (result.ok, result.entries, result.expired) == (True, 2, 1)
    assert book.paused("OLD1", NOW) is None
    assert [p.practice_id for p in result.started] == ["NEW1"]


def test_paused_gives_until_note_and_seconds_left() -> None:
    """Lookups are case-insensitive and end exactly at pause_until."""
    book = PauseBook()
    book.reload(document({"UKTEST1": {"pause_until": LATER, "note": "server move"}}), NOW)
    pause = book.paused("uktest1", NOW)
    assert pause is not None
    assert (pause.practice_id, pause.until, pause.note) == ("UKTEST1", LATER_S, "server move")
    assert pause.seconds_left == LATER_S - NOW
    assert book.paused("UKTEST1", LATER_S - 0.001) is not None
    assert book.paused("UKTEST1", LATER_S) is None
    assert book.paused("UKTEST2", NOW) is None


def test_malformed_reload_keeps_the_previous_content() -> None:
    """A bad file changes nothing and says why; the next good file applies."""
    book = PauseBook()
    book.reload(document({"UKTEST1": {"pause_until": LATER}}), NOW)
    result = book.reload(b'{"practices": {"UKTEST1": ', NOW)
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith("invalid JSON at line 1 column")
    assert (result.entries, result.started, result.ended) == (1, (), ())
    assert book.paused("UKTEST1", NOW) is not None
    assert book.reload(b"", NOW).error is not None  # a truncated write lifts nothing
    assert book.paused("UKTEST1", NOW) is not None
    result = book.reload(document({"UKTEST2": {"pause_until": LATER}}), NOW)
    assert ([p.practice_id for p in result.started], result.ended) == (["UKTEST2"], ("UKTEST1",))


def test_events_are_reported_once() -> None:
    """Start on the reload that adds a pause, end on the reload that removes it or on the
    first tick after its time; re-reading the same content reports nothing."""
    book = PauseBook()
    content = document(
        {"A1": {"pause_until": "2026-05-28T20:30:00Z"}, "B1": {"pause_until": LATER}}
    )
    first = book.reload(content, NOW)
    assert sorted(p.practice_id for p in first.started) == ["A1", "B1"]
    again = book.reload(content, NOW)
    assert (again.started, again.ended) == ((), ())
    assert book.tick(NOW + 100).ended == ()
    assert book.tick(NOW + 200).ended == ("A1",)  # 20:30 passed
    assert book.tick(NOW + 300).ended == ()
    extended = book.reload(document({"B1": {"pause_until": LATER, "note": "longer"}}), NOW + 300)
    assert (extended.started, extended.ended) == ((), ())  # B1 was already paused
    assert book.clear(NOW + 400).ended == ("B1",)
    assert book.active(NOW + 400) == []


# --- the watcher, on a real file -----------------------------------------------------------


class Polls:
    """The watcher's sleep: lets the test run one poll at a time, with no real waiting."""

    def __init__(self) -> None:
        self.count = 0
        self.turn = asyncio.Event()
        self.polled = asyncio.Condition()

    async def sleep(self, _interval: float) -> None:
        async with self.polled:
            self.count += 1
            self.polled.notify_all()
        await self.turn.wait()
        self.turn.clear()

    async def next(self) -> None:
        """Let the watcher poll once more and wait until it has."""
        async with self.polled:
            target = self.count + 1
            self.turn.set()
            await self.polled.wait_for(lambda: self.count >= target)


def replace(path: Path, data: bytes) -> None:
    """Write like Kubernetes does: a new file renamed over the old one (a new inode)."""
    fresh = path.with_suffix(".new")
    fresh.write_bytes(data)
    os.replace(fresh, path)


async def test_watcher_follows_a_real_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Missing file: no pauses, logged once. Appearing, replaced, broken, fixed, removed:
    each change is seen on the next poll, events reach on_change, a broken file keeps the
    previous pauses and is logged as an error."""
    path = tmp_path / "pauses.json"
    book = PauseBook()
    polls = Polls()
    seen: list[ReloadResult] = []
    clock: Callable[[], float] = lambda: NOW  # noqa: E731
    caplog.set_level(logging.INFO, logger="gateway.pauses")
    task = asyncio.create_task(
        watch_file(path, book, wall=clock, sleep=polls.sleep, interval=5, on_change=seen.append)
    )
    try:
        async with polls.polled:
            await polls.polled.wait_for(lambda: polls.count >= 1)
        await polls.next()
        assert [r.message for r in caplog.records].count(
            "practice pauses file not found: no practice is paused"
        ) == 1

        replace(path, document({"UKTEST1": {"pause_until": LATER, "note": "server move"}}))
        await polls.next()
        assert book.paused("UKTEST1", NOW) is not None
        assert [p.practice_id for p in seen[-1].started] == ["UKTEST1"]

        replace(path, b'{"practices": {"UKTEST1": {"pause_until": ')
        await polls.next()
        assert book.paused("UKTEST1", NOW) is not None  # the previous content stays
        assert seen[-1].error is not None
        assert "invalid JSON at line 1" in seen[-1].error
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        await polls.next()  # unchanged broken file: not reported again
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1

        replace(path, document({"UKTEST2": {"pause_until": LATER}}))
        await polls.next()
        assert book.paused("UKTEST1", NOW) is None
        assert book.paused("UKTEST2", NOW) is not None
        assert seen[-1].ended == ("UKTEST1",)

        path.unlink()
        await polls.next()
        assert book.active(NOW) == []
        assert seen[-1].ended == ("UKTEST2",)
        events = [getattr(r, "fields", {}).get("event") for r in caplog.records]
        assert events.count("pause_started") == 2
        assert events.count("pause_ended") == 2
        assert events.count("pause_file_missing") == 2  # once at start, once on removal
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watcher_reads_at_most_one_byte_past_the_limit(tmp_path: Path) -> None:
    """A huge file (here 8 MiB) is refused by size without being read whole, and the
    previous pauses stay."""
    path = tmp_path / "pauses.json"
    book = PauseBook()
    book.reload(document({"UKTEST1": {"pause_until": LATER}}), NOW)
    path.write_bytes(b" " * (8 * MAX_FILE_BYTES))
    polls = Polls()
    seen: list[ReloadResult] = []
    task = asyncio.create_task(
        watch_file(path, book, wall=lambda: NOW, sleep=polls.sleep, on_change=seen.append)
    )
    try:
        async with polls.polled:
            await polls.polled.wait_for(lambda: polls.count >= 1)
        assert seen[-1].error == f"the file is larger than {MAX_FILE_BYTES} bytes"
        assert book.paused("UKTEST1", NOW) is not None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(
    ("practice_id", "raw", "message"),
    [
        ("UKTEST1", b'{"pause_until": "soon"}', "RFC 3339"),
        ("UKTEST1", b'{"note": "x"}', "pause_until is required"),
        ("UKTEST1", b'{"pause_until": "2026-12-01T06:00:00Z", "by": "me"}', "unknown key"),
        ("UKTEST1", b'{"pause_until": "2026-12-01T06:00:00Z", "note": "a\\u0007"}', "control"),
        ("UKTEST1", b"[]", "expected an object"),
        ("UKTEST1", b"", "empty"),
        (
            "UKTEST1",
            b'{"pause_until": "2026-12-01T06:00:00Z", "note": "' + b"x" * 2000 + b'"}',
            "at most 1024 bytes",
        ),
        ("../etc", b'{"pause_until": "2026-12-01T06:00:00Z"}', "not a practice id"),
    ],
)
def test_a_fleet_pause_is_validated_like_an_entry_of_the_file(
    practice_id: str, raw: bytes, message: str
) -> None:
    with pytest.raises(PauseFileError, match=message):
        parse_entry(practice_id, raw)


def test_a_fleet_pause_round_trips_through_its_stored_form() -> None:
    entry = parse_entry("uktest1", b'{"pause_until": "2026-12-01T07:00:00+01:00", "note": "n"}')
    again = parse_entry("uktest1", encode_entry(entry))
    assert (again.until, again.note) == (LATER_S, "n")


def test_fleet_pauses_merge_with_the_files_and_the_file_wins() -> None:
    """The file names UKTEST1 (its pause over): the fleet's pause for it does not apply; the
    fleet's pause for UKTEST2 does; expired fleet pauses are dropped; a file reload or
    removal leaves the fleet's pauses in force."""
    book = PauseBook()
    book.reload(document({"UKTEST1": {"pause_until": "2020-01-01T00:00:00Z"}}), NOW)
    fleet = {
        "UKTEST1": parse_entry("UKTEST1", b'{"pause_until": "2026-12-01T06:00:00Z"}'),
        "UKTEST2": parse_entry("UKTEST2", b'{"pause_until": "2026-12-01T06:00:00Z"}'),
        "UKTEST3": parse_entry("UKTEST3", b'{"pause_until": "2020-01-01T00:00:00Z"}'),
    }
    result = book.set_fleet(fleet, NOW)
    assert result.entries == 2
    assert [p.practice_id for p in result.started] == ["UKTEST2"]
    assert book.paused("UKTEST1", NOW) is None
    assert book.paused("uktest2", NOW) is not None
    assert book.clear(NOW).ended == ()
    assert book.paused("UKTEST1", NOW) is not None  # no file: the fleet's pause applies
    assert book.set_fleet({}, NOW).ended == ("UKTEST1", "UKTEST2")
