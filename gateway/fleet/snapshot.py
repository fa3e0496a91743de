"""The state file: what a restarted gateway should not have to learn again.

A gateway restarted in the middle of a practice's outage would otherwise start with every
breaker closed and spend its callers' requests re-discovering the outage, and its
availability ledger would start empty. So the fleet-relevant state is written to a file
(``STATE_FILE``, an ``emptyDir`` in Kubernetes, which survives a container restart) every
``STATE_SAVE_INTERVAL_SECONDS`` and at drain, and read back at start:

* the practice breakers that are not closed: practice id, state, open-until as wall-clock
  Unix time (monotonic clocks do not survive a restart), re-openings (so the next open
  period keeps growing) and the cause;
* the availability ledger's snapshot (restored by :mod:`gateway.fleet.ledger_state`).

Operator pauses are not in it: they come from their own file.

The document is versioned (``format``) and names the gateway it belongs to (``gateway``: the
environment and a hash of the client id, never the id), so a file left by another partner's
or another environment's gateway on a reused volume is ignored. Reading drops what has
expired: an open breaker whose open-until has passed, and a half-open one from a file older
than ``half_open_keep`` seconds.

Writing is atomic (a temporary file in the same directory, written, fsynced, renamed over
the old one, the directory fsynced), mode 0600: a crash mid-write leaves the previous file.
Reading is bounded (8 MiB) and suspicious: a missing file is a first start; an unreadable,
oversized, truncated, corrupt or foreign one is reported in one log line
(``state_file_ignored`` with the reason) and ignored. Neither ever stops the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.exact_api import PRACTICE_ID
from gateway.fleet.namespace import IDENTITY

log = logging.getLogger("gateway.fleet.snapshot")

FORMAT = "exact-gateway-state/1"
MAX_BYTES = 8 * 1024 * 1024
MAX_BREAKERS = 100_000
BREAKER_STATES = frozenset({"open", "half_open"})
_CAUSE_MAX = 32


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    practice_id: str
    state: str  # "open" or "half_open"
    open_until: float  # Unix time
    reopenings: int
    cause: str | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    gateway: str
    written_at: float  # Unix time
    breakers: tuple[BreakerRecord, ...]
    ledger: dict[str, Any] | None  # Ledger.snapshot(hourly=True), JSON-ready


class SnapshotRejected(ValueError):
    """The file is not a usable snapshot of this gateway; the message says why (never quotes
    the content)."""


def encode(snapshot: Snapshot) -> bytes:
    document = {
        "format": FORMAT,
        "gateway": snapshot.gateway,
        "written_at": snapshot.written_at,
        "breakers": [asdict(record) for record in snapshot.breakers],
        "ledger": snapshot.ledger,
    }
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def decode(data: bytes, *, gateway: str, now: float, half_open_keep: float = 300.0) -> Snapshot:
    """The snapshot in ``data`` with expired breakers dropped, or :class:`SnapshotRejected`."""
    document = _load(data)
    if not isinstance(document, dict):
        raise SnapshotRejected("not a JSON object")
    if document.get("format") != FORMAT:
        raise SnapshotRejected("unknown format")
    owner = document.get("gateway")
    if not isinstance(owner, str) or not IDENTITY.fullmatch(owner):
        raise SnapshotRejected("no valid gateway identity")
    if owner != gateway:
        raise SnapshotRejected(f"written by another gateway ({owner})")
    written_at = _number(document.get("written_at"), "written_at")
    raw_breakers = document.get("breakers")
    if not isinstance(raw_breakers, list) or len(raw_breakers) > MAX_BREAKERS:
        raise SnapshotRejected("breakers is not a bounded list")
    breakers = []
    for raw in raw_breakers:
        record = _breaker(raw)
        if record.state == "open" and record.open_until <= now:
            continue  # its open time is over: it would probe now anyway, so start closed
        if record.state == "half_open" and now - written_at > half_open_keep:
            continue  # too old to say anything about the practice now
        breakers.append(record)
    ledger = document.get("ledger")
    if ledger is not None and not isinstance(ledger, dict):
        raise SnapshotRejected("ledger is not an object")
    return Snapshot(owner, written_at, tuple(breakers), ledger)


def _load(data: bytes) -> Any:
    if len(data) > MAX_BYTES:
        raise SnapshotRejected(f"larger than {MAX_BYTES} bytes")
    try:
        return json.loads(data, parse_constant=_no_constant, object_pairs_hook=_no_dupes)
    except RecursionError:
        raise SnapshotRejected("nested too deeply") from None
    except UnicodeDecodeError:
        raise SnapshotRejected("not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise SnapshotRejected(f"not JSON (line {exc.lineno}, column {exc.colno})") from None
    except ValueError as exc:
        raise SnapshotRejected(str(exc)) from None


def _breaker(raw: Any) -> BreakerRecord:
    if not isinstance(raw, dict) or set(raw) != {
        "practice_id",
        "state",
        "open_until",
        "reopenings",
        "cause",
    }:
        raise SnapshotRejected("a breaker is not a breaker record")
    practice_id, state, reopenings, cause = (
        raw["practice_id"],
        raw["state"],
        raw["reopenings"],
        raw["cause"],
    )
    if not isinstance(practice_id, str) or not PRACTICE_ID.fullmatch(practice_id):
        raise SnapshotRejected("a breaker has an invalid practice id")
    if state not in BREAKER_STATES:
        raise SnapshotRejected("a breaker has an unknown state")
    if isinstance(reopenings, bool) or not isinstance(reopenings, int) or not 0 <= reopenings < 64:
        raise SnapshotRejected("a breaker has invalid reopenings")
    if cause is not None and (
        not isinstance(cause, str) or not cause.isascii() or not 0 < len(cause) <= _CAUSE_MAX
    ):
        raise SnapshotRejected("a breaker has an invalid cause")
    return BreakerRecord(
        practice_id, state, _number(raw["open_until"], "open_until"), reopenings, cause
    )


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SnapshotRejected(f"{name} is not a number")
    return float(value)


def _no_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not allowed")


def _no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate keys")
    return result


# -- the file -----------------------------------------------------------------------------


def write_snapshot(path: Path, snapshot: Snapshot) -> None:
    """Replace ``path`` atomically with ``snapshot`` (mode 0600); OSError on failure, with
    the temporary file removed."""
    data = encode(snapshot)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(descriptor, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    # The rename itself must reach the disk, or a crash could bring back the old name.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_snapshot(
    path: Path, *, gateway: str, now: float, half_open_keep: float = 300.0
) -> Snapshot | None:
    """The usable snapshot at ``path``, or None: nothing there (a first start), or a file
    reported in one log line and ignored."""
    try:
        data = _read_bounded(path)
    except FileNotFoundError:
        return None
    except SnapshotRejected as exc:
        _ignored(path, str(exc))
        return None
    except OSError as exc:
        _ignored(path, f"cannot be read ({type(exc).__name__})")
        return None
    try:
        return decode(data, gateway=gateway, now=now, half_open_keep=half_open_keep)
    except SnapshotRejected as exc:
        _ignored(path, str(exc))
        return None


def _read_bounded(path: Path) -> bytes:
    # Non-blocking open: a FIFO planted at the path must not hang the start.
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise SnapshotRejected("not a regular file")
        if info.st_size > MAX_BYTES:
            raise SnapshotRejected(f"larger than {MAX_BYTES} bytes")
        chunks, size = [], 0
        while chunk := os.read(descriptor, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BYTES:
                raise SnapshotRejected(f"larger than {MAX_BYTES} bytes")
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def _ignored(path: Path, reason: str) -> None:
    log.warning(
        "state_file_ignored",
        extra={"fields": {"event": "state_file_ignored", "path": str(path), "reason": reason}},
    )


class StateFile:
    """Saves ``collect()`` to the file every ``interval`` seconds and on :meth:`save`.

    ``collect`` runs on the event loop (it reads the breakers and the ledger); encoding and
    the file's I/O run in a worker thread. A failed write is logged once
    (``state_file_write_failed``) until a write succeeds again (``state_file_writable``).
    """

    def __init__(
        self,
        path: Path,
        *,
        interval: float,
        collect: Callable[[], Snapshot],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.interval = interval
        self._collect = collect
        self._monotonic = monotonic
        self._failing = False
        self.saves = 0
        self.last_saved: float | None = None

    async def run(self) -> None:
        """Save every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            await self.save()

    async def save(self) -> bool:
        snapshot = self._collect()
        try:
            await asyncio.to_thread(write_snapshot, self.path, snapshot)
        except (OSError, ValueError) as exc:
            if not self._failing:
                self._failing = True
                log.exception(
                    "state_file_write_failed",
                    extra={
                        "fields": {
                            "event": "state_file_write_failed",
                            "path": str(self.path),
                            "error": type(exc).__name__,
                        }
                    },
                )
            return False
        if self._failing:
            self._failing = False
            log.info(
                "state_file_writable",
                extra={"fields": {"event": "state_file_writable", "path": str(self.path)}},
            )
        self.saves += 1
        self.last_saved = self._monotonic()
        return True
