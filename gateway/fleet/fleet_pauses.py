"""Operator pauses set once for the whole fleet: a Redis hash every replica reads.

A pause in the pauses file (``PRACTICE_PAUSES_FILE``) reaches a replica only through its
own mounted file. A pause set through the admin port (``PUT /pauses/{practice_id}``) is
written to the fleet's hash in Redis (practice id to ``{"pause_until", "note"}``, validated
exactly like an entry of the file by :func:`gateway.pauses.parse_entry`) and announced on the
fleet's pauses channel; every replica reads the whole hash when it hears the announcement,
after each (re)subscription, and every ``interval`` seconds anyway (a missed message costs
at most that long), then hands the valid entries to the
:class:`~gateway.pauses.PauseBook`, which merges them with the file's (the file wins for a
practice it names; expired ones are dropped). A value in the hash that is not a valid pause
(written by hand, by another version) is skipped and logged once per change.

Redis down, slow or wrong: the pauses last read stay in force until their time passes (a
pause must not lift because Redis blinked), setting one is refused with a clear answer, and
requests never wait for Redis: the book is read in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.asyncio import Redis

from gateway.exact_api import PRACTICE_ID
from gateway.fleet.redis_link import Operation, RedisLink
from gateway.pauses import PauseEntry, PauseFileError, encode_entry, parse_entry

log = logging.getLogger("gateway.fleet.fleet_pauses")

MAX_PAUSES = 10_000  # more is not an operator's list: the rest are ignored
ApplyPauses = Callable[[dict[str, PauseEntry]], None]


class FleetPauses:
    """Reads the fleet's pauses into the book, and writes them for the admin port."""

    def __init__(
        self, link: RedisLink, *, prefix: str, apply: ApplyPauses, interval: float
    ) -> None:
        self._link = link
        self._apply = apply
        self.interval = interval
        self.key = f"{prefix}:pauses"
        self.channel = f"{prefix}:pauses"
        self._wake = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._refused: frozenset[str] = frozenset()
        self.reads = 0  # reads Redis answered

    def start(self) -> None:
        self._link.subscribe(self.channel, self._heard, self._subscribed)
        self._reader = asyncio.create_task(self._read_loop(), name="fleet-pauses")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    # -- writing (the admin port) -----------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._link.up

    async def set(self, practice_id: str, body: bytes) -> PauseEntry | None:
        """Validate and store a pause for the fleet: the entry, or None when Redis did not
        take it; :class:`PauseFileError` when the body is not a valid pause."""
        entry = parse_entry(practice_id, body)
        stored = encode_entry(entry)

        async def write(client: Redis) -> bool:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hset(self.key, entry.practice_id.upper(), stored)
                pipe.publish(self.channel, b"changed")
                await pipe.execute()
            return True

        if not await self._link.call(Operation.PAUSES, write, False):
            return None
        self._wake.set()
        return entry

    async def remove(self, practice_id: str) -> bool:
        """Lift the fleet's pause for the practice (if any); False when Redis did not answer."""
        if PRACTICE_ID.fullmatch(practice_id) is None:
            raise PauseFileError("not a practice id")

        async def write(client: Redis) -> bool:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hdel(self.key, practice_id.upper())
                pipe.publish(self.channel, b"changed")
                await pipe.execute()
            return True

        done = await self._link.call(Operation.PAUSES, write, False)
        if done:
            self._wake.set()
        return done

    # -- reading ------------------------------------------------------------------------------

    def _heard(self, _data: bytes) -> None:
        self._wake.set()

    async def _subscribed(self) -> None:
        self._wake.set()

    async def _read_loop(self) -> None:
        while True:
            await self.read()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()

    async def read(self) -> bool:
        """Read the hash into the book; False (and the book untouched) if Redis is away."""

        async def read_all(client: Redis) -> dict[bytes | str, bytes | str] | None:
            return dict(await client.hgetall(self.key))

        raw = await self._link.call(Operation.PAUSES, read_all, None)
        if raw is None:
            return False
        self.reads += 1
        entries: dict[str, PauseEntry] = {}
        refused: set[str] = set()
        for field, value in list(raw.items())[:MAX_PAUSES]:
            name = field.decode("ascii", "replace") if isinstance(field, bytes) else ""
            try:
                entries[name.upper()] = parse_entry(name, _bytes(value))
            except PauseFileError:
                refused.add(name.upper() if PRACTICE_ID.fullmatch(name) else "?")
        if frozenset(refused) != self._refused and refused:
            log.error(
                "fleet pauses refused",
                extra={"fields": {"event": "fleet_pause_invalid", "count": len(refused)}},
            )
        self._refused = frozenset(refused)
        self._apply(entries)
        return True


def _bytes(value: bytes | str) -> bytes:
    if not isinstance(value, bytes):
        raise PauseFileError("not a byte string")
    return value
