"""This gateway as a member of its fleet: the fleet's parts wired to the breakers, the
bulkhead, the ledger and the idempotency records.

Built by the composition root (:mod:`gateway.app`) when ``STATE_FILE`` or ``REDIS_URL`` is
set, and only through narrow hooks, so the request path does not know the fleet exists:

* **State file**: read back once before the listener opens (:meth:`FleetMember.restore`):
  the ledger first, then each saved breaker is tripped until its saved open-until (a
  half-open one is tripped to probe at once), with its re-openings and cause; written every
  ``STATE_SAVE_INTERVAL_SECONDS`` and once more after the drain.
* **Verdicts** (Redis): the resilience rules tell us when a practice breaker opened on
  EXACT's own 503/504 (``watch_openings``): "unavailable until T, cause" is announced. A
  breaker that closes from half-open (its probe succeeded; ``watch_breakers``) announces
  "closed". Received verdicts trip the local breaker until T, or close it. What this
  replica applies from elsewhere (a verdict, the snapshot) is never announced again, so
  nothing echoes around the fleet.
* **Failure streaks** (Redis): EXACT's own 503/504 for a practice on a closed breaker
  (``watch_streaks``) increments the fleet's count for it in the background; when the
  count reaches ``BREAKER_CONSECUTIVE_FAILURES`` the local breaker opens and the usual
  verdict is announced, so round-robin replicas do not each spend a breaker's worth of
  attempts. A success after failures, or a breaker closing here, deletes the count.
* **Pauses** (Redis): :class:`~gateway.fleet.fleet_pauses.FleetPauses` reads the fleet's
  pauses into the practice watch's book and writes them for the admin port.
* **Shares** (Redis): a loop beats the replica's heartbeat and sets the bulkhead's
  per-practice limit to ``PRACTICE_CONCURRENCY // live replicas`` (at least 1), off the
  request path; without Redis (down, or never set) the share is the whole limit.
* **Idempotency** (Redis): :class:`~gateway.fleet.shared_keys.SharedKeys` wraps the
  process's store.

:meth:`status` is the ``fleet`` part of ``/status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.clock import Clock
from gateway.fleet.failure_streaks import FailureStreaks
from gateway.fleet.fleet_pauses import FleetPauses
from gateway.fleet.idempotency_records import IdempotencyRecords
from gateway.fleet.ledger_state import ledger_from_snapshot
from gateway.fleet.namespace import new_replica_id, redis_prefix
from gateway.fleet.redis_link import LinkPolicy, RedisLink
from gateway.fleet.replicas import Replicas
from gateway.fleet.shared_keys import SharedKeys
from gateway.fleet.snapshot import BreakerRecord, Snapshot, StateFile, read_snapshot
from gateway.fleet.verdicts import VerdictCause, Verdicts
from gateway.idempotency import IdempotencyKeys, IdempotencyStore
from gateway.practices.watch import PracticeWatch
from gateway.resilience import Resilience
from gateway.resilience.breaker import Breaker, State

log = logging.getLogger("gateway.fleet.member")

# The cause kept for a breaker tripped by another replica's verdict (snapshot causes are
# at most 32 ASCII characters).
_HEARD = "fleet:"


class FleetMember:
    """The fleet's parts of one gateway; see the module docstring."""

    def __init__(
        self,
        *,
        identity: str,
        state_file: Path | None,
        save_interval: float,
        link: RedisLink | None,
        resilience: Resilience,
        practices: PracticeWatch,
        clock: Clock,
        heartbeat: float,
        secret: bytes,
        local_keys: IdempotencyStore,
        idempotency_ttl: float,
    ) -> None:
        self.identity = identity
        self.replica_id = new_replica_id()
        self._resilience = resilience
        self._practices = practices
        self._clock = clock
        self._limit = resilience.bulkhead.per_practice  # the fleet's, as configured
        self._causes: dict[str, str] = {}
        self._applying = False
        self.state_file = (
            None
            if state_file is None
            else StateFile(
                state_file,
                interval=save_interval,
                collect=self.collect,
                monotonic=clock.monotonic,
            )
        )
        self.link = link
        self.verdicts: Verdicts | None = None
        self.replicas: Replicas | None = None
        self.streaks: FailureStreaks | None = None
        self.pauses: FleetPauses | None = None
        self.keys: IdempotencyKeys = local_keys
        self._shared_keys: SharedKeys | None = None
        if link is not None:
            prefix = redis_prefix(identity)
            self.verdicts = Verdicts(
                link, prefix=prefix, replica_id=self.replica_id, on_verdict=self._heard
            )
            self.streaks = FailureStreaks(
                link,
                prefix=prefix,
                threshold=resilience.breaker_policy.consecutive,
                window=resilience.breaker_policy.window,
                on_threshold=self._streak_reached,
            )
            resilience.watch_streaks(self._streak)
            self.pauses = FleetPauses(
                link,
                prefix=prefix,
                apply=practices.apply_fleet_pauses,
                interval=practices.policy.pauses_poll,
            )
            self.replicas = Replicas(
                link, prefix=prefix, replica_id=self.replica_id, heartbeat=heartbeat
            )
            records = IdempotencyRecords(
                link,
                prefix=prefix,
                replica_id=self.replica_id,
                ttl=idempotency_ttl,
                secret=secret,
            )
            self._shared_keys = SharedKeys(local_keys, records)
            self.keys = self._shared_keys
        resilience.watch_openings(self._opened_on_verdict)
        resilience.watch_breakers(self._transition)

    # -- lifecycle ----------------------------------------------------------------------------

    def restore(self) -> int:
        """Read the state file back (before the listener opens); how many breakers it
        restored. A missing, corrupt or foreign file restores nothing (logged once)."""
        if self.state_file is None:
            return 0
        snapshot = read_snapshot(
            self.state_file.path, gateway=self.identity, now=self._clock.wall()
        )
        if snapshot is None:
            return 0
        if snapshot.ledger is not None:
            try:
                self._practices.ledger = ledger_from_snapshot(
                    snapshot.ledger,
                    self._practices.policy.ledger,
                    self._clock.wall,
                    open_practices=[record.practice_id for record in snapshot.breakers],
                )
            except ValueError as exc:
                log.warning(
                    "state_file_ignored",
                    extra={
                        "fields": {
                            "event": "state_file_ignored",
                            "path": str(self.state_file.path),
                            "reason": f"ledger: {exc}",
                        }
                    },
                )
        for record in snapshot.breakers:
            until = record.open_until if record.state == State.OPEN.value else None
            self._trip(record.practice_id, until, record.cause, reopenings=record.reopenings)
        log.info(
            "state restored",
            extra={
                "fields": {
                    "event": "state_file_restored",
                    "breakers": len(snapshot.breakers),
                    "ledger": snapshot.ledger is not None,
                }
            },
        )
        return len(snapshot.breakers)

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        """Start the background parts, each undone by ``stack`` (in reverse): the link
        closes last, after the final save and after this replica left the fleet."""
        if self.link is not None:
            await self.link.start()
            stack.push_async_callback(self.link.close)
        if self.verdicts is not None:
            self.verdicts.start()
            stack.push_async_callback(self.verdicts.close)
        if self._shared_keys is not None:
            stack.push_async_callback(self._shared_keys.close)
        if self.streaks is not None:
            stack.push_async_callback(self.streaks.close)
        if self.pauses is not None:
            self.pauses.start()
            stack.push_async_callback(self.pauses.close)
        if self.replicas is not None:
            sharing = asyncio.create_task(self._share_loop(), name="fleet-shares")
            stack.push_async_callback(self._leave, sharing)
        if self.state_file is not None:
            saving = asyncio.create_task(self.state_file.run(), name="state-file")
            stack.push_async_callback(self._final_save, saving)

    async def _final_save(self, saving: asyncio.Task[None]) -> None:
        saving.cancel()
        await asyncio.gather(saving, return_exceptions=True)
        assert self.state_file is not None  # noqa: S101 - only scheduled with a file
        await self.state_file.save()

    async def _leave(self, sharing: asyncio.Task[None]) -> None:
        sharing.cancel()
        await asyncio.gather(sharing, return_exceptions=True)
        assert self.replicas is not None  # noqa: S101 - only scheduled with Redis
        await self.replicas.close()  # the others' shares grow at their next beat
        self._resilience.bulkhead.per_practice = self._limit

    async def _share_loop(self) -> None:
        assert self.replicas is not None  # noqa: S101 - only started with Redis
        while True:
            await self.replicas.beat()
            self._resilience.bulkhead.per_practice = self.replicas.share(self._limit)
            await asyncio.sleep(self.replicas.heartbeat)

    # -- the state file -----------------------------------------------------------------------

    def collect(self) -> Snapshot:
        """What the state file holds now (runs on the event loop)."""
        now, wall = self._clock.monotonic(), self._clock.wall()
        breakers = tuple(
            BreakerRecord(
                breaker.key,
                breaker.state.value,
                wall + (breaker.open_until - now),
                min(breaker.reopenings, 63),
                self._causes.get(breaker.key),
            )
            for breaker in self._resilience.breakers.not_closed()
        )
        return Snapshot(self.identity, wall, breakers, self._practices.ledger.snapshot(hourly=True))

    # -- verdicts -----------------------------------------------------------------------------

    def _opened_on_verdict(self, breaker: Breaker, status: int) -> None:
        cause = VerdictCause(str(status))
        self._causes[breaker.key] = cause.value
        if self.verdicts is not None and not self._applying:
            until = self._clock.wall() + (breaker.open_until - self._clock.monotonic())
            self.verdicts.announce_unavailable(breaker.key, until, cause)

    def _streak(self, breaker: Breaker, status: int | None) -> None:
        assert self.streaks is not None  # noqa: S101 - only watched with Redis
        if status is None:
            self.streaks.broken(breaker.key)
        else:
            self.streaks.failed(breaker.key, status)

    def _streak_reached(self, practice_id: str, status: int) -> None:
        """The fleet saw ``BREAKER_CONSECUTIVE_FAILURES`` of EXACT's 503/504 in a row for
        the practice: open here (unless already open) and announce it like an opening."""
        breaker = self._resilience.breakers.get(practice_id)
        if breaker.state is not State.CLOSED:
            return
        breaker.trip(self._clock.monotonic())
        self._opened_on_verdict(breaker, status)

    def _transition(self, breaker: Breaker, previous: State, state: State) -> None:
        if state is not State.CLOSED:
            return
        self._causes.pop(breaker.key, None)
        if self.streaks is not None and not self._applying:
            self.streaks.broken(breaker.key)  # a fresh start: the old streak is over
        # Half-open to closed is a successful probe; a reset (an EXACT-wide outage forgiven)
        # or a verdict heard from elsewhere says nothing new about the practice.
        if previous is State.HALF_OPEN and self.verdicts is not None and not self._applying:
            self.verdicts.announce_closed(breaker.key)

    def _heard(self, practice_id: str, until: float | None, cause: str | None) -> None:
        """Another replica's verdict: trip the local breaker until ``until``, or close it."""
        if until is None:
            breaker = self._resilience.breakers.get(practice_id.upper())
            if breaker.state is not State.CLOSED:
                with self._quiet():
                    breaker.reset()
            return
        self._trip(practice_id, until, f"{_HEARD}{cause}" if cause else None)

    def _trip(
        self, practice_id: str, until: float | None, cause: str | None, reopenings: int = -1
    ) -> None:
        """Open the practice's breaker until ``until`` (wall clock), or to probe at once."""
        now = self._clock.monotonic()
        breaker = self._resilience.breakers.get(practice_id.upper())
        if reopenings >= 0 and breaker.state is State.CLOSED:
            breaker.reopenings = reopenings
        opened_until = now if until is None else now + (until - self._clock.wall())
        with self._quiet():
            breaker.trip(now, until=opened_until)
        if cause is not None:
            self._causes[breaker.key] = cause

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        self._applying = True
        try:
            yield
        finally:
            self._applying = False

    # -- visibility ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``fleet`` part of ``/status``: never the Redis password."""
        shown: dict[str, Any] = {
            "replica_id": self.replica_id,
            "practice_concurrency": self._resilience.bulkhead.per_practice,
            "practice_concurrency_configured": self._limit,
            "redis": None if self.link is None else self.link.status(),
            "state_file": None,
        }
        if self.replicas is not None:
            shown |= self.replicas.status()
        if self.verdicts is not None:
            shown["verdicts"] = {
                "published": self.verdicts.published,
                "received": self.verdicts.received,
                "dropped": self.verdicts.dropped,
            }
        if self.streaks is not None:
            shown["failure_streaks"] = {
                "counted": self.streaks.counted,
                "dropped": self.streaks.dropped,
            }
        if self.state_file is not None:
            last = self.state_file.last_saved
            shown["state_file"] = {
                "saves": self.state_file.saves,
                "last_saved_seconds_ago": None
                if last is None
                else round(self._clock.monotonic() - last, 3),
            }
        return shown


def build_member(
    *,
    identity: str,
    state_file_path: Path | None,
    save_interval: float,
    redis_url: str | None,
    redis_timeout: float,
    heartbeat: float,
    client_secret: str,
    registry: CollectorRegistry,
    resilience: Resilience,
    practices: PracticeWatch,
    clock: Clock,
    local_keys: IdempotencyStore,
    idempotency_ttl: float,
) -> FleetMember:
    """A member from the fleet's settings (the state file and the link only when set)."""
    link = (
        RedisLink(redis_url, registry=registry, policy=LinkPolicy(timeout=redis_timeout))
        if redis_url is not None
        else None
    )
    # Keys and fingerprints are stored as HMACs under a secret every replica of this partner
    # knows and nobody else does: the client secret, hashed with a label of its own.
    secret = hashlib.sha256(b"exact-gateway/idempotency\0" + client_secret.encode()).digest()
    return FleetMember(
        identity=identity,
        state_file=state_file_path,
        save_interval=save_interval,
        link=link,
        resilience=resilience,
        practices=practices,
        clock=clock,
        heartbeat=heartbeat,
        secret=secret,
        local_keys=local_keys,
        idempotency_ttl=idempotency_ttl,
    )
