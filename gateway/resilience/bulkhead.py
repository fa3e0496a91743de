"""Concurrency limits: a few requests in flight per practice, many in all.

A practice's on-premises server is a small machine behind a relay; a burst of callers for one
practice must not flood it, nor take every slot of the gateway. Over a limit the gateway
answers 503 at once (``practice_busy`` or ``gateway_busy``) rather than queueing: a caller's
own retry with backoff is better than a queue nobody can see. Memory is bounded by the
number of requests in flight: a practice's counter disappears when it drops to zero.
"""

from __future__ import annotations

from gateway.errors import GatewayBusy, PracticeBusy

RETRY_AFTER_SECONDS = 1.0


class Bulkhead:
    def __init__(self, per_practice: int, total: int) -> None:
        self._per_practice = per_practice
        self._total = total
        self._inflight = 0
        self._by_practice: dict[str, int] = {}

    def acquire(self, practice_id: str | None) -> None:
        """Take a slot, or raise the 503 that says which limit is full."""
        if self._inflight >= self._total:
            raise GatewayBusy(
                "the gateway has too many requests in flight", retry_after=RETRY_AFTER_SECONDS
            )
        if practice_id is not None:
            key = practice_id.upper()  # EXACT matches practice ids case-insensitively
            held = self._by_practice.get(key, 0)
            if held >= self._per_practice:
                raise PracticeBusy(
                    f"{held} requests to this practice are already in flight",
                    retry_after=RETRY_AFTER_SECONDS,
                )
            self._by_practice[key] = held + 1
        self._inflight += 1

    def release(self, practice_id: str | None) -> None:
        self._inflight -= 1
        if practice_id is not None:
            key = practice_id.upper()
            held = self._by_practice[key] - 1
            if held:
                self._by_practice[key] = held
            else:
                del self._by_practice[key]

    @property
    def per_practice(self) -> int:
        return self._per_practice

    @per_practice.setter
    def per_practice(self, limit: int) -> None:
        """Change the per-practice limit at run time (a replica's share of the fleet's):
        requests already in flight keep their slots; new ones see the new limit."""
        self._per_practice = max(1, limit)

    @property
    def inflight(self) -> int:
        return self._inflight

    def practices_in_flight(self) -> int:
        return len(self._by_practice)
