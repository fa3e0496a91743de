"""Verdicts: "practice X is unavailable until T", shared by every replica of the fleet.

EXACT's 503 for a practice is the cloud relay's verdict that it cannot reach the practice's
server, and its 504 that the server did not answer in time: the same for every replica. So
when one replica's breaker for X opens on them, the others may open theirs for X until the
same wall-clock time T instead of each spending its own failed attempts to learn it. When a
probe succeeds, "X closed" is shared too. Counts are never shared, only verdicts.

The contract for the caller (the wiring in the breaker's transition callback):

* announce *unavailable* only when the breaker opened because EXACT answered 503 or 504
  (:class:`VerdictCause` has exactly those two). Never for our own time-outs, connection
  errors to the EXACT host (partner-wide, not the practice's), 502 (the practice answered),
  a caller's fault (its deadline, its slow body, its hang-up), a pause or a verdict received
  from another replica (re-announcing what was heard would echo it around the fleet);
* announce *closed* after a successful probe;
* ``until`` is wall-clock Unix time; receivers convert it to their own clocks.

Both announcements are synchronous, never raise and never wait: they queue (the newest
verdict per practice wins, the queue is bounded) and a background task publishes. On Redis
each verdict is a message on the fleet's channel plus a key with a TTL until T, so a replica
that starts later (or reconnects after missing messages) reads the keys and catches up.

Received verdicts go to ``on_verdict(practice_id, until_unix | None, cause | None)``:
``None`` means closed. Messages of this replica, and anything malformed (too large, not the
expected JSON, an id that is not a practice id, a time in the past or not a number) are
dropped silently and counted in :attr:`Verdicts.dropped`. An ``until`` further ahead than
``max_ahead`` seconds is shortened to that: no message can close a practice for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from gateway.exact_api import PRACTICE_ID
from gateway.fleet.namespace import REPLICA_ID
from gateway.fleet.redis_link import Operation, RedisLink

log = logging.getLogger("gateway.fleet.verdicts")

FORMAT = 1
MAX_MESSAGE_BYTES = 512  # a verdict is about 120 bytes of JSON
_SCAN_PAGE = 200
_CATCH_UP_MAX_KEYS = 10_000  # a fleet watches thousands of practices at most


class VerdictCause(StrEnum):
    """Why a practice is unavailable: only EXACT's own verdicts qualify."""

    STATUS_503 = "503"
    STATUS_504 = "504"


OnVerdict = Callable[[str, float | None, str | None], None]
_Pending = tuple[str, float | None, VerdictCause | None]


class Verdicts:
    """Publishes this replica's verdicts and delivers the others'."""

    def __init__(
        self,
        link: RedisLink,
        *,
        prefix: str,
        replica_id: str,
        on_verdict: OnVerdict,
        max_ahead: float = 300.0,
        outbox_max: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._link = link
        self._replica = replica_id
        self._on_verdict = on_verdict
        self._max_ahead = max_ahead
        self._outbox_max = outbox_max
        self._clock = clock
        self.channel = f"{prefix}:verdicts"
        self._key_prefix = f"{prefix}:verdict:"
        self._outbox: OrderedDict[str, _Pending] = OrderedDict()
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self.dropped = 0  # received messages refused as malformed
        self.received = 0  # verdicts delivered to on_verdict
        self.published = 0

    def start(self) -> None:
        self._link.subscribe(self.channel, self._on_message, self._catch_up)
        self._sender = asyncio.create_task(self._send_loop(), name="verdict-sender")

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender

    # -- announcing -------------------------------------------------------------------------

    def announce_unavailable(self, practice_id: str, until: float, cause: VerdictCause) -> None:
        """Queue "unavailable until ``until`` (Unix time)"; see the module's contract."""
        self._queue(practice_id, (practice_id, until, VerdictCause(cause)))

    def announce_closed(self, practice_id: str) -> None:
        """Queue "closed" (a probe succeeded)."""
        self._queue(practice_id, (practice_id, None, None))

    def _queue(self, practice_id: str, pending: _Pending) -> None:
        if not PRACTICE_ID.fullmatch(practice_id):
            return
        key = practice_id.upper()
        self._outbox.pop(key, None)
        self._outbox[key] = pending
        while len(self._outbox) > self._outbox_max:
            self._outbox.popitem(last=False)
        self._wake.set()

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                _, (practice_id, until, cause) = self._outbox.popitem(last=False)
                if until is None:
                    await self.publish_closed(practice_id)
                elif cause is not None:
                    await self.publish_unavailable(practice_id, until, cause)

    async def publish_unavailable(
        self, practice_id: str, until: float, cause: VerdictCause
    ) -> bool:
        """Publish now (the sender's job; tests call it directly). False if not published:
        Redis unavailable, or ``until`` already past."""
        ttl_ms = math.ceil((until - self._clock()) * 1000)
        if ttl_ms <= 0 or not PRACTICE_ID.fullmatch(practice_id):
            return False
        return await self._publish(
            practice_id, self._encode(practice_id, until, VerdictCause(cause).value), ttl_ms
        )

    async def publish_closed(self, practice_id: str) -> bool:
        if not PRACTICE_ID.fullmatch(practice_id):
            return False
        return await self._publish(practice_id, self._encode(practice_id, None, None), None)

    async def _publish(self, practice_id: str, body: bytes, ttl_ms: int | None) -> bool:
        """Store the verdict (for ``ttl_ms``; None: the practice is closed, so forget it)
        and announce it, in one round trip."""
        key = self._key_prefix + practice_id.upper()

        async def send(client: Redis) -> bool:
            async with client.pipeline(transaction=False) as pipe:
                if ttl_ms is None:
                    pipe.delete(key)
                else:
                    pipe.set(key, body, px=ttl_ms)
                pipe.publish(self.channel, body)
                await pipe.execute()
            return True

        sent = await self._link.call(Operation.VERDICT_PUBLISH, send, False)
        self.published += sent
        return sent

    def _encode(self, practice_id: str, until: float | None, cause: str | None) -> bytes:
        message = {
            "v": FORMAT,
            "practice_id": practice_id,
            "until": until,
            "cause": cause,
            "replica": self._replica,
        }
        return json.dumps(message, separators=(",", ":")).encode()

    # -- receiving --------------------------------------------------------------------------

    def _on_message(self, data: bytes) -> None:
        verdict = self._decode(data)
        if verdict is not None:
            self._deliver(*verdict)

    async def _catch_up(self) -> None:
        """Read the verdict keys (after each subscription): what was said while this
        replica was not listening. Page by page, each page one bounded call."""
        cursor = 0
        seen = 0

        async def page(client: Redis) -> tuple[int, list[Any]] | None:
            next_cursor, keys = await client.scan(
                cursor, match=self._key_prefix + "*", count=_SCAN_PAGE
            )
            values = await client.mget(keys) if keys else []
            return int(next_cursor), list(values)

        while seen < _CATCH_UP_MAX_KEYS:
            result = await self._link.call(Operation.VERDICT_READ, page, None)
            if result is None:
                return
            cursor, values = result
            seen += len(values)
            for value in values:
                verdict = self._decode(value) if isinstance(value, bytes) else None
                if verdict is not None and verdict[1] is not None:
                    self._deliver(*verdict)
            if cursor == 0:
                return

    def _decode(self, data: bytes) -> tuple[str, float | None, str | None] | None:
        """A valid verdict of another replica, or None (counted in ``dropped`` unless it
        is merely this replica's own)."""
        message = _parse(data)
        if message is None:
            self.dropped += 1
            return None
        if message["replica"] == self._replica:
            return None
        practice_id, until, cause = message["practice_id"], message["until"], message["cause"]
        if until is None:
            return practice_id, None, None
        now = self._clock()
        if until <= now:
            return None  # over already: nothing to do (a late or replayed message)
        return practice_id, min(until, now + self._max_ahead), cause

    def _deliver(self, practice_id: str, until: float | None, cause: str | None) -> None:
        self.received += 1
        try:
            self._on_verdict(practice_id, until, cause)
        except Exception as exc:  # a bug in the receiver must not stop the feed
            log.exception(
                "verdict_delivery_failed",
                extra={"fields": {"event": "verdict_delivery_failed", "error": type(exc).__name__}},
            )


def _parse(data: bytes) -> dict[str, Any] | None:  # noqa: PLR0911 (one return per check)
    """The message if it is exactly a well-formed verdict, else None."""
    if len(data) > MAX_MESSAGE_BYTES:
        return None
    try:
        message = json.loads(data, parse_constant=_refuse)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or set(message) != {
        "v",
        "practice_id",
        "until",
        "cause",
        "replica",
    }:
        return None
    practice_id, until, cause, replica = (
        message["practice_id"],
        message["until"],
        message["cause"],
        message["replica"],
    )
    if message["v"] != FORMAT or type(message["v"]) is not int:
        return None
    if not isinstance(practice_id, str) or not PRACTICE_ID.fullmatch(practice_id):
        return None
    if not isinstance(replica, str) or not REPLICA_ID.fullmatch(replica):
        return None
    if until is None:
        return message if cause is None else None
    if isinstance(until, bool) or not isinstance(until, int | float) or not math.isfinite(until):
        return None
    if cause not in {c.value for c in VerdictCause}:
        return None
    return message


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not a number here")
