"""Operator pauses: practices an operator has taken out of service until a given time.

A practice moving servers, or one the vendor asked us to leave alone, should not be sent
requests that can only fail or do harm. Operators list such practices in the file named by
``PRACTICE_PAUSES_FILE`` (a mounted ConfigMap in Kubernetes)::

    {"practices": {"UKTEST1": {"pause_until": "2026-12-01T06:00:00Z", "note": "server move"}}}

The file is read strictly, because a typo must not silently lift or invent a pause: the one
top-level key ``practices``; ids matching the practice-id pattern, no id twice (ids compare
case-insensitively, as EXACT's do); ``pause_until`` an RFC 3339 time with ``Z`` or an
offset; ``note`` optional, at most 200 characters, no control characters; no other keys; at
most 1 MiB. A pause whose time has passed is allowed and simply over, so an operator who
forgets to clean up does not make the whole file invalid. An empty file is an error, not
"no pauses": an editor that truncates before it writes must not lift every pause at once.

:class:`PauseBook` holds the last valid content. A malformed file is reported in one line
(with line and column for JSON errors) and the previous content stays in force. Each reload,
and each :meth:`PauseBook.tick`, reports which pauses started and ended, for the logs.
:func:`watch_file` polls the file's (inode, mtime, size) stamp like the client-secret file
watch does, so a ConfigMap update (an atomic symlink swap) is picked up without a restart;
a missing file means no pauses and is logged once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.exact_api import PRACTICE_ID

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1024 * 1024
NOTE_MAX_CHARS = 200
MAX_ENTRY_BYTES = 1024  # one pause of the fleet's hash: a note of 200 characters fits
_ENTRY_KEYS = frozenset({"pause_until", "note"})
_RFC3339 = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ](?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]{1,9}))?(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class PauseFileError(ValueError):
    """The pauses file cannot be used; the message is one line naming the problem. Never
    answered to a caller: the previous content stays in force and the message is logged."""


@dataclass(frozen=True, slots=True)
class Pause:
    """A practice paused now: until when (wall-clock seconds), why, and for how much longer."""

    practice_id: str
    until: float
    note: str
    seconds_left: float


@dataclass(frozen=True, slots=True)
class PauseEntry:
    """One valid pause as written (by the file or the fleet's Redis hash)."""

    practice_id: str
    until: float
    note: str


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did: an error (content kept) or the new count, and the events."""

    error: str | None = None
    entries: int = 0
    expired: int = 0
    started: tuple[Pause, ...] = ()
    ended: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


def _shown(value: object) -> str:
    """A value from the file, safe to put in a log line: repr'd and cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {_shown(key)} appears twice")
        seen[key] = value
    return seen


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_time(value: object, where: str) -> float:
    """An RFC 3339 date-time with ``Z`` or an offset, as epoch seconds."""
    found = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise PauseFileError(
            f"{where}: pause_until must be an RFC 3339 time with an offset, such as"
            f" 2026-12-01T06:00:00Z; got {_shown(value)}"
        )
    fraction = (found["fraction"] or "0")[:6]  # datetime keeps microseconds
    offset = "+00:00" if found["offset"] in ("Z", "z") else found["offset"]
    try:
        moment = datetime.fromisoformat(f"{found['date']}T{found['time']}.{fraction}{offset}")
        return moment.timestamp()
    except (ValueError, OverflowError) as exc:
        raise PauseFileError(f"{where}: pause_until is not a real time: {exc}") from None


def _decode(data: bytes) -> Any:
    if len(data) > MAX_FILE_BYTES:
        raise PauseFileError(f"the file is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PauseFileError(f"not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise PauseFileError('the file is empty; write {"practices": {}} for no pauses')
    try:
        return json.loads(
            text, object_pairs_hook=_pairs_without_duplicates, parse_constant=_refuse_constant
        )
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise PauseFileError(f"invalid JSON at {where}: {exc.msg}") from None
    except RecursionError:
        raise PauseFileError("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # a duplicate key, NaN, or an integer of thousands of digits
        raise PauseFileError(f"invalid JSON: {exc}") from None


def _entry(practice_id: str, body: Any) -> PauseEntry:
    where = f"practice {practice_id}"
    if not isinstance(body, dict):
        raise PauseFileError(f'{where}: expected an object with "pause_until" and "note"')
    unknown = set(body) - _ENTRY_KEYS
    if unknown:
        raise PauseFileError(f"{where}: unknown key {_shown(sorted(unknown)[0])}")
    if "pause_until" not in body:
        raise PauseFileError(f"{where}: pause_until is required")
    until = parse_time(body["pause_until"], where)
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > NOTE_MAX_CHARS or _CONTROL.search(note):
        raise PauseFileError(
            f"{where}: note must be text of at most {NOTE_MAX_CHARS} characters without"
            " control characters"
        )
    return PauseEntry(practice_id, until, note)


def parse_entry(practice_id: str, data: bytes) -> PauseEntry:
    """One practice's pause as the fleet stores it (``{"pause_until", "note"}``), validated
    exactly like an entry of the file, or :class:`PauseFileError`."""
    if PRACTICE_ID.fullmatch(practice_id) is None:
        raise PauseFileError(f"{_shown(practice_id)} is not a practice id")
    if len(data) > MAX_ENTRY_BYTES:
        raise PauseFileError(f"a pause is at most {MAX_ENTRY_BYTES} bytes")
    return _entry(practice_id, _decode(data))


def encode_entry(entry: PauseEntry) -> bytes:
    """The canonical stored form of a valid pause (its time as UTC RFC 3339)."""
    until = datetime.fromtimestamp(entry.until, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps({"pause_until": until, "note": entry.note}, separators=(",", ":")).encode()


def parse_pauses(data: bytes) -> dict[str, PauseEntry]:
    """The pauses in a file's bytes, keyed by upper-case id, or :class:`PauseFileError`."""
    document = _decode(data)
    if not isinstance(document, dict) or set(document) != {"practices"}:
        raise PauseFileError('the file must be an object with the one key "practices"')
    practices = document["practices"]
    if not isinstance(practices, dict):
        raise PauseFileError('"practices" must be an object of practice id to pause')
    entries: dict[str, PauseEntry] = {}
    for practice_id, body in practices.items():
        if PRACTICE_ID.fullmatch(practice_id) is None:
            raise PauseFileError(f"{_shown(practice_id)} is not a practice id")
        if practice_id.upper() in entries:
            raise PauseFileError(f"practice {practice_id} appears twice (ids are case-insensitive)")
        entries[practice_id.upper()] = _entry(practice_id, body)
    return entries


class PauseBook:
    """The pauses in force: the last valid file content merged with the fleet's pauses
    (the file wins for a practice it names), and which are active now."""

    def __init__(self) -> None:
        self._file: dict[str, PauseEntry] = {}
        self._fleet: dict[str, PauseEntry] = {}
        self._entries: dict[str, PauseEntry] = {}  # the merge, rebuilt on each change
        self._active: set[str] = set()  # keys whose pause was reported as started

    def paused(self, practice_id: str, now_wall: float) -> Pause | None:
        """The practice's pause if it is paused at ``now_wall``."""
        entry = self._entries.get(practice_id.upper())
        if entry is None or entry.until <= now_wall:
            return None
        return Pause(entry.practice_id, entry.until, entry.note, entry.until - now_wall)

    def active(self, now_wall: float) -> list[Pause]:
        """Every pause in force at ``now_wall``, soonest end first."""
        found = (self.paused(key, now_wall) for key in self._entries)
        return sorted((p for p in found if p is not None), key=lambda p: p.until)

    def reload(self, data: bytes, now_wall: float) -> ReloadResult:
        """Replace the file's content with its bytes; on error keep the old content."""
        try:
            entries = parse_pauses(data)
        except PauseFileError as exc:
            return ReloadResult(error=str(exc), entries=len(self._entries))
        self._file = entries
        self._merge()
        expired = sum(1 for e in entries.values() if e.until <= now_wall)
        started, ended = self._events(now_wall)
        return ReloadResult(None, len(entries), expired, started, ended)

    def clear(self, now_wall: float) -> ReloadResult:
        """No file: no pauses from it (the fleet's stay)."""
        self._file = {}
        self._merge()
        started, ended = self._events(now_wall)
        return ReloadResult(None, 0, 0, started, ended)

    def set_fleet(self, entries: dict[str, PauseEntry], now_wall: float) -> ReloadResult:
        """Replace the fleet's pauses (keyed by upper-case id); expired ones are dropped."""
        self._fleet = {key: e for key, e in entries.items() if e.until > now_wall}
        self._merge()
        started, ended = self._events(now_wall)
        return ReloadResult(None, len(self._fleet), 0, started, ended)

    def tick(self, now_wall: float) -> ReloadResult:
        """Report pauses that ran out since the last call (their time passed)."""
        started, ended = self._events(now_wall)
        return ReloadResult(None, len(self._entries), 0, started, ended)

    def _merge(self) -> None:
        self._entries = self._fleet | self._file

    def _events(self, now_wall: float) -> tuple[tuple[Pause, ...], tuple[str, ...]]:
        now_active = {p.practice_id.upper(): p for p in self.active(now_wall)}
        started = tuple(p for key, p in now_active.items() if key not in self._active)
        ended = tuple(sorted(self._active - now_active.keys()))
        self._active = set(now_active)
        return started, ended


Stamp = tuple[int, int, int]


def file_stamp(path: Path) -> Stamp | None:
    """What changes when the file is replaced (Kubernetes swaps a symlink); None if absent."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _read_bounded(path: Path) -> bytes:
    # One byte past the limit is enough to know it is too large, whatever its real size.
    with path.open("rb") as file:
        return file.read(MAX_FILE_BYTES + 1)


def log_events(path: Path | str, result: ReloadResult) -> None:
    """One line per pause started or ended, and one for a refused file."""
    for pause in result.started:
        log.warning(
            "practice paused",
            extra={
                "fields": {
                    "event": "pause_started",
                    "practice_id": pause.practice_id,
                    "pause_until": datetime.fromtimestamp(pause.until, UTC).isoformat(),
                    "note": pause.note,
                }
            },
        )
    for practice_id in result.ended:
        log.warning(
            "practice pause ended",
            extra={"fields": {"event": "pause_ended", "practice_id": practice_id}},
        )
    if result.error is not None:
        log.error(
            "practice pauses file refused; the previous content stays in force",
            extra={
                "fields": {"event": "pause_file_invalid", "file": str(path), "error": result.error}
            },
        )


async def watch_file(
    path: Path,
    book: PauseBook,
    *,
    wall: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    interval: float = 5.0,
    on_change: Callable[[ReloadResult], None] | None = None,
) -> None:
    """Keep ``book`` in step with the file at ``path`` until cancelled.

    ``on_change`` gets every result that started or ended a pause or reported an error, so
    the caller can mirror pauses elsewhere (the ledger) without polling the book.
    """
    last: Stamp | bool | None = False  # False: nothing read yet, so the first poll loads
    while True:
        stamp = file_stamp(path)
        if stamp != last:
            if stamp is None:
                log.warning(
                    "practice pauses file not found: no practice is paused",
                    extra={"fields": {"event": "pause_file_missing", "file": str(path)}},
                )
                result = book.clear(wall())
            else:
                try:
                    data = await asyncio.to_thread(_read_bounded, path)
                except OSError as exc:
                    data = None
                    result = ReloadResult(error=f"cannot read the file: {exc.strerror}")
                if data is not None:
                    result = book.reload(data, wall())
            last = stamp
        else:
            result = book.tick(wall())
        log_events(path, result)
        if on_change is not None and (result.started or result.ended or result.error):
            on_change(result)
        await sleep(interval)
