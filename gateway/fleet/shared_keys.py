"""``Idempotency-Key`` across replicas: this process's records first, the fleet's second.

The proxy asks a key store three things (:class:`gateway.idempotency.IdempotencyKeys`):
claim a key, complete it with the answer, release it. :class:`SharedKeys` answers them with
the process's own :class:`~gateway.idempotency.IdempotencyStore` first, exactly as a gateway
without Redis does, and then with the fleet's records in Redis
(:class:`~gateway.fleet.idempotency_records.IdempotencyRecords`):

* a key this process knows (in flight, answered, another fingerprint) is decided locally,
  without touching Redis: a replay keeps its whole answer;
* a key new to this process is claimed in Redis too (``SET NX``, one round trip bounded by
  ``REDIS_TIMEOUT_SECONDS``). Another replica's claim in flight: 409
  ``idempotency_key_in_use``; its record for another request: 422
  ``idempotency_key_mismatch``; its answered record: the stored *status* with an empty body
  and ``Idempotent-Replayed: true`` (Redis holds no bodies, no headers, no patient data), so
  the request is never sent twice. Redis down, slow or wrong: the local claim stands, as
  without Redis;
* completing and releasing update Redis in the background (never on the answer's path), and
  only a claim this replica holds in Redis.
"""

from __future__ import annotations

from http import HTTPStatus

from gateway.errors import IdempotencyKeyInUse, IdempotencyKeyMismatch
from gateway.fleet.backlog import Backlog
from gateway.fleet.idempotency_records import ClaimOutcome, IdempotencyRecords
from gateway.idempotency import Claim, IdempotencyStore, StoredAnswer

# At most this many background updates at once: past it one is dropped (its Redis record then
# stays in flight until its TTL, which errs on the side of never sending twice).
_PENDING_MAX = 1000


class SharedKeys:
    """The fleet's key store: :class:`IdempotencyStore` plus the records in Redis."""

    def __init__(self, local: IdempotencyStore, records: IdempotencyRecords) -> None:
        self._local = local
        self._records = records
        self.max_response_bytes = local.max_response_bytes
        self._shared: set[Claim] = set()  # claims this replica also holds in Redis
        self._backlog = Backlog(_PENDING_MAX)

    async def claim(self, key: str, print_: str) -> Claim | StoredAnswer:
        local = self._local.begin(key, print_)
        if not isinstance(local, Claim):
            return local  # answered here before: the whole answer is replayed
        try:
            shared = await self._records.claim(key, print_)
        except BaseException:
            self._local.release(local)  # cancelled (the caller left): free the local claim
            raise
        outcome = shared.outcome
        if outcome is ClaimOutcome.CLAIMED:
            self._shared.add(local)
            return local
        if outcome is ClaimOutcome.UNAVAILABLE:
            return local
        self._local.release(local)
        if outcome is ClaimOutcome.MISMATCH:
            raise IdempotencyKeyMismatch("this Idempotency-Key was used for a different request")
        if outcome is ClaimOutcome.DONE and shared.status is not None:
            return _status_only(shared.status)
        raise IdempotencyKeyInUse(
            "a request with this Idempotency-Key is still being processed", retry_after=1
        )

    def complete(self, claim: Claim, answer: StoredAnswer) -> None:
        self._local.complete(claim, answer)
        if claim in self._shared:
            self._shared.discard(claim)
            self._backlog.send(self._records.complete(claim.key, claim.fingerprint, answer.status))

    def release(self, claim: Claim) -> None:
        self._local.release(claim)
        if claim in self._shared:
            self._shared.discard(claim)
            self._backlog.send(self._records.release(claim.key, claim.fingerprint))

    async def close(self) -> None:
        """Let the updates under way finish (each is bounded by the link's time-out)."""
        await self._backlog.close()


def _status_only(status: int) -> StoredAnswer:
    """Another replica answered this key: Redis kept only the status."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    return StoredAnswer(status, reason, (), None)
