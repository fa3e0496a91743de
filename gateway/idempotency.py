"""Idempotency-Key for POST and PATCH: a keyed request is carried to EXACT at most once.

EXACT documents no support for the ``Idempotency-Key`` header, so the key proves nothing to
EXACT: a ``POST .../Contact`` sent twice is a patient texted twice. The gateway therefore
honours the key itself, following the IETF draft "The Idempotency-Key HTTP Header Field":

* the first request with a key claims it; the key is remembered with a fingerprint of the
  request (a hash of method, target and body: nothing readable is kept of it);
* a request with the same key while the first is in flight gets 409
  ``idempotency_key_in_use``; one with the same key but another fingerprint gets 422
  ``idempotency_key_mismatch``;
* once the first is answered, a repeat gets the stored answer (status, end-to-end headers and
  a body up to a bound) with ``Idempotent-Replayed: true``, and EXACT is not called again;
* a request that provably never reached the practice (refused by the gateway, a connection
  that failed before sending, EXACT's 503 "practice unreachable" or 401) releases its key, so
  the caller's retry is a first attempt again.

Bounded: at most ``max_keys`` records for at most ``ttl`` seconds each (oldest answered ones
evicted first), kept bodies at most ``max_response_bytes`` each and ``max_stored_bytes`` in
all; past that the oldest bodies are dropped but their records stay, so protection against a
duplicate outlives the convenience of a replayed body. Held in memory only, never logged.
Pure: the clock is passed in.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from gateway.clock import Clock
from gateway.errors import BadRequest, IdempotencyKeyInUse, IdempotencyKeyMismatch

# The draft's key is an sf-string; clients send bare tokens too. Either way: short, visible
# ASCII, so it cannot carry a payload of its own.
_KEY = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,254}")
KEYED_METHODS = frozenset({"POST", "PATCH"})


def fingerprint(method: str, target: str, body: bytes | None, length: int | None) -> str:
    """A hash of what makes two requests "the same request" for a key.

    A body that streams (too large to buffer) is represented by its declared length only.
    """
    digest = hashlib.sha256()
    digest.update(method.encode())
    digest.update(b"\0")
    digest.update(target.encode("latin-1", "replace"))
    digest.update(b"\0")
    if body is not None:
        digest.update(body)
    else:
        digest.update(f"streamed:{length}".encode())
    return digest.hexdigest()


def valid_key(value: str) -> str:
    """The key as sent, or :class:`BadRequest` for one the gateway will not remember."""
    if not _KEY.fullmatch(value):
        raise BadRequest("Idempotency-Key must be 1-255 visible ASCII characters")
    return value


class State(StrEnum):
    IN_FLIGHT = "in_flight"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """What the first request was answered: replayed as is to every repeat."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None  # None: too large to keep (the repeat gets the status and headers)

    @property
    def size(self) -> int:
        return len(self.body) if self.body is not None else 0

    def without_body(self) -> StoredAnswer:
        kept = tuple(
            (name, value)
            for name, value in self.headers
            if name.lower() not in {"content-length", "content-encoding"}
        )
        return StoredAnswer(self.status, self.reason, kept, None)


@dataclass(slots=True)
class Record:
    fingerprint: str
    expires_at: float
    state: State = State.IN_FLIGHT
    answer: StoredAnswer | None = field(default=None)


@dataclass(frozen=True, slots=True)
class Claim:
    """The caller holds the key: send the request, then :meth:`IdempotencyStore.complete`
    or :meth:`IdempotencyStore.release` it."""

    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class IdempotencyPolicy:
    ttl: float = 86400.0
    max_keys: int = 10000
    max_response_bytes: int = 65536
    max_stored_bytes: int = 16 * 1024 * 1024


class IdempotencyKeys(Protocol):
    """What the proxy asks of a key store: this process's (:class:`IdempotencyStore`) or the
    fleet's (:class:`gateway.fleet.shared_keys.SharedKeys`, which wraps it)."""

    max_response_bytes: int

    async def claim(self, key: str, print_: str) -> Claim | StoredAnswer: ...

    def complete(self, claim: Claim, answer: StoredAnswer) -> None: ...

    def release(self, claim: Claim) -> None: ...


class IdempotencyStore:
    def __init__(self, policy: IdempotencyPolicy, clock: Clock) -> None:
        self._ttl = policy.ttl
        self._max_keys = policy.max_keys
        self.max_response_bytes = policy.max_response_bytes
        self._max_stored_bytes = policy.max_stored_bytes
        self._clock = clock
        self._records: OrderedDict[str, Record] = OrderedDict()  # oldest first
        self.stored_bytes = 0

    def __len__(self) -> int:
        return len(self._records)

    def begin(self, key: str, print_: str) -> Claim | StoredAnswer:
        """Claim ``key`` for a new request, or return the answer to replay.

        Raises :class:`IdempotencyKeyInUse` or :class:`IdempotencyKeyMismatch`.
        """
        now = self._clock.monotonic()
        self._expire(now)
        record = self._records.get(key)
        if record is not None:
            if record.fingerprint != print_:
                raise IdempotencyKeyMismatch(
                    "this Idempotency-Key was used for a different request"
                )
            if record.state is State.IN_FLIGHT or record.answer is None:
                raise IdempotencyKeyInUse(
                    "a request with this Idempotency-Key is still being processed",
                    retry_after=1,
                )
            return record.answer
        while len(self._records) >= self._max_keys:
            self._evict_one()
        self._records[key] = Record(print_, now + self._ttl)
        return Claim(key, print_)

    async def claim(self, key: str, print_: str) -> Claim | StoredAnswer:
        """:meth:`begin`, as the proxy calls it (:class:`IdempotencyKeys`)."""
        return self.begin(key, print_)

    def complete(self, claim: Claim, answer: StoredAnswer) -> None:
        """The request may have reached the practice: remember its answer for repeats."""
        record = self._records.get(claim.key)
        if record is None or record.fingerprint != claim.fingerprint:
            return  # evicted meanwhile (the table was full of newer keys)
        if answer.body is not None and answer.size > self.max_response_bytes:
            answer = answer.without_body()
        record.state = State.DONE
        record.answer = answer
        self.stored_bytes += answer.size
        self._shed_bodies()

    def release(self, claim: Claim) -> None:
        """The request provably never reached the practice: the key is free again."""
        record = self._records.get(claim.key)
        if record is not None and record.state is State.IN_FLIGHT:
            del self._records[claim.key]

    # -- bounds -----------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        while self._records:
            key, record = next(iter(self._records.items()))
            if record.expires_at > now:
                return
            self._drop(key)

    def _evict_one(self) -> None:
        # The oldest answered record goes first; in-flight ones only if nothing else is left
        # (they are bounded by the concurrency limits anyway).
        for key, record in self._records.items():
            if record.state is State.DONE:
                self._drop(key)
                return
        self._drop(next(iter(self._records)))

    def _shed_bodies(self) -> None:
        if self.stored_bytes <= self._max_stored_bytes:
            return
        for record in self._records.values():
            answer = record.answer
            if answer is not None and answer.body is not None:
                self.stored_bytes -= answer.size
                record.answer = answer.without_body()
                if self.stored_bytes <= self._max_stored_bytes:
                    return

    def _drop(self, key: str) -> None:
        record = self._records.pop(key)
        if record.answer is not None:
            self.stored_bytes -= record.answer.size
