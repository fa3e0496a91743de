"""``Idempotency-Key`` records shared by the replicas of a fleet, through Redis.

In one process, a keyed POST/PATCH reaches the practice at most once (the in-memory records
of the idempotency module). Across replicas, a caller's retry that lands on another replica
would be sent again. Here each key's record lives in Redis for the key's TTL:

    key    <prefix>:idem:<HMAC-SHA256(secret, Idempotency-Key)>
    value  {"fp": HMAC-SHA256(secret, fingerprint), "state": "in_flight"|"done",
            "status": <int>|null, "replica": <replica id>}

The first request claims the key with ``SET NX`` (atomic: of two replicas claiming at once,
exactly one wins). No response body, header, target or patient data is ever written: the
caller's key and the request's fingerprint are stored only as keyed hashes, so a reader of
Redis can neither read them nor confirm a guess of them without the secret (pass one that
the fleet shares and nobody else knows; the client secret hashed with a label is a good
one).

What a request gets from :meth:`IdempotencyRecords.claim`:

``CLAIMED``      it is the first: send it, then :meth:`complete` (its status) or, when it
                 provably did not reach the practice, :meth:`release`.
``IN_FLIGHT``    another request with this key is in progress (on any replica), or the
                 record cannot be read: answer 409 ``idempotency_key_in_use``, never send.
                 A replica that dies mid-request leaves its record in flight until the TTL
                 ends: whether that request reached the practice is unknown, so a repeat
                 must not be sent (the caller may choose a new key deliberately).
``DONE``         answered before. The replica that answered replays the whole answer from
                 its memory; any other replica has only the status, and answers with that
                 status, an empty body and ``Idempotent-Replayed: true`` (as for an answer
                 whose body was too large to keep). Never sent again.
``MISMATCH``     the key was used for another request: 422 ``idempotency_key_mismatch``.
``UNAVAILABLE``  Redis did not answer: decide with the local records alone (a repeat on
                 another replica is then not recognised, as without Redis).

:meth:`complete` and :meth:`release` change a record only if it is still this replica's own
in-flight claim (checked in Redis, atomically), so a late call cannot overwrite another
replica's record after a TTL ran out and the key was claimed again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from gateway.fleet.redis_link import Operation, RedisLink

MAX_RECORD_BYTES = 512

# Replace (complete) or delete (release) the record only while it is exactly our claim.
_COMPLETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class RecordState(StrEnum):
    IN_FLIGHT = "in_flight"
    DONE = "done"


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"
    IN_FLIGHT = "in_flight"
    DONE = "done"
    MISMATCH = "mismatch"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: ClaimOutcome
    status: int | None = None  # the stored status, for DONE


UNAVAILABLE = Claim(ClaimOutcome.UNAVAILABLE)


class IdempotencyRecords:
    """Claim, complete and release keys in the fleet's Redis."""

    def __init__(
        self,
        link: RedisLink,
        *,
        prefix: str,
        replica_id: str,
        ttl: float,
        secret: bytes,
    ) -> None:
        if not secret:
            raise ValueError("a secret is needed to hash keys and fingerprints")
        self._link = link
        self._prefix = f"{prefix}:idem:"
        self._replica = replica_id
        self._ttl_ms = max(1, math.ceil(ttl * 1000))
        self._secret = secret

    def _hash(self, label: bytes, value: str) -> str:
        return hmac.new(self._secret, label + value.encode(), hashlib.sha256).hexdigest()

    def _key(self, idempotency_key: str) -> str:
        return self._prefix + self._hash(b"key\0", idempotency_key)

    def _record(self, fingerprint: str, state: RecordState, status: int | None) -> bytes:
        return json.dumps(
            {
                "fp": self._hash(b"fingerprint\0", fingerprint),
                "state": state.value,
                "status": status,
                "replica": self._replica,
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()

    async def claim(self, idempotency_key: str, fingerprint: str) -> Claim:
        """Claim the key for this request, or say why not (see the module's table)."""
        key = self._key(idempotency_key)
        mine = self._record(fingerprint, RecordState.IN_FLIGHT, None)
        expected_fp = self._hash(b"fingerprint\0", fingerprint)

        async def claim(client: Redis) -> Claim:
            # Twice at most: a record that expires between SET NX and GET is claimed anew.
            for _ in range(2):
                if await client.set(key, mine, nx=True, px=self._ttl_ms):
                    return Claim(ClaimOutcome.CLAIMED)
                value = await client.get(key)
                if value is not None:
                    return _judge(value, expected_fp)
            return Claim(ClaimOutcome.IN_FLIGHT)

        return await self._link.call(Operation.IDEMPOTENCY_CLAIM, claim, UNAVAILABLE)

    async def complete(self, idempotency_key: str, fingerprint: str, status: int) -> bool:
        """Record the answer's status (only the status). False if Redis did not take it."""
        if not 100 <= status <= 599:
            raise ValueError("an HTTP status is between 100 and 599")
        claimed = self._record(fingerprint, RecordState.IN_FLIGHT, None)
        done = self._record(fingerprint, RecordState.DONE, status)

        async def complete(client: Redis) -> bool:
            changed = await client.eval(
                _COMPLETE, 1, self._key(idempotency_key), claimed, done, self._ttl_ms
            )
            return bool(changed == 1)

        return await self._link.call(Operation.IDEMPOTENCY_UPDATE, complete, False)

    async def release(self, idempotency_key: str, fingerprint: str) -> bool:
        """Forget this replica's claim: the request provably never reached the practice."""
        claimed = self._record(fingerprint, RecordState.IN_FLIGHT, None)

        async def release(client: Redis) -> bool:
            changed = await client.eval(_RELEASE, 1, self._key(idempotency_key), claimed)
            return bool(changed == 1)

        return await self._link.call(Operation.IDEMPOTENCY_UPDATE, release, False)


def _judge(value: Any, expected_fp: str) -> Claim:  # noqa: PLR0911 (one return per check)
    """What an existing record means for a request with fingerprint ``expected_fp``.
    Anything unreadable counts as in flight: the safe answer never sends twice."""
    if not isinstance(value, bytes) or len(value) > MAX_RECORD_BYTES:
        return Claim(ClaimOutcome.IN_FLIGHT)
    try:
        record = json.loads(value)
    except (ValueError, RecursionError):
        return Claim(ClaimOutcome.IN_FLIGHT)
    if not isinstance(record, dict):
        return Claim(ClaimOutcome.IN_FLIGHT)
    fp, state, status = record.get("fp"), record.get("state"), record.get("status")
    if not isinstance(fp, str):
        return Claim(ClaimOutcome.IN_FLIGHT)
    if not hmac.compare_digest(fp, expected_fp):
        return Claim(ClaimOutcome.MISMATCH)
    if (
        state == RecordState.DONE.value
        and isinstance(status, int)
        and not isinstance(status, bool)
        and 100 <= status <= 599
    ):
        return Claim(ClaimOutcome.DONE, status)
    return Claim(ClaimOutcome.IN_FLIGHT)
