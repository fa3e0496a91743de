"""Subscriptions: which practices are subscribed to the partner's product, and how fresh
that knowledge is.

``GET /v1/Subscriptions/active`` (scope ``productsubscription.get``) lists the practices that
subscribed. EXACT answers 403 for a practice that is not on it; a gateway that keeps the list
fresh answers 403 ``practice_not_subscribed`` itself, but only after one re-check, because a
practice that subscribed a minute ago must be served at once.

Pure, with an injected monotonic clock. The verdict for a practice is ``SUBSCRIBED``,
``NOT_LISTED`` (a fresh list does not hold it) or ``UNKNOWN`` (no list yet, or the last
successful fetch is older than ``stale_after``: then requests pass, fail open). A re-check
on a miss is rate-limited (at most one every ``recheck_interval`` seconds, whoever asks), so a
flood of made-up practice ids costs at most one list fetch per interval.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from gateway.exact_api import PRACTICE_ID

# Tens of thousands of practice ids fit; a larger answer is not a subscriptions list.
LIST_MAX_BYTES = 4 * 1024 * 1024
LIST_MAX_ENTRIES = 100_000


class Verdict(Enum):
    SUBSCRIBED = "subscribed"
    NOT_LISTED = "not_listed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class SubscriptionPolicy:
    refresh_interval: float = 300.0
    recheck_interval: float = 10.0

    @property
    def stale_after(self) -> float:
        """A list this old no longer refuses anyone: three missed refreshes."""
        return 3 * self.refresh_interval


@dataclass(frozen=True, slots=True)
class Changes:
    added: tuple[str, ...]
    removed: tuple[str, ...]


def parse_subscriptions(body: bytes) -> list[str] | None:
    """The practice ids of a ListActiveSubscriptions answer (a JSON array of ids), or None
    when it is not one. Bounded; ids that are not practice ids make the whole answer
    unusable (a list we cannot trust must not refuse anyone)."""
    if len(body) > LIST_MAX_BYTES:
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, list) or len(document) > LIST_MAX_ENTRIES:
        return None
    if not all(isinstance(item, str) and PRACTICE_ID.fullmatch(item) for item in document):
        return None
    return list(document)


class SubscriptionBook:
    """The last list of active subscriptions, when it was fetched, and re-check pacing."""

    def __init__(self, policy: SubscriptionPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self._clock = clock
        self._ids: dict[str, str] = {}  # upper-case key -> id as listed
        self._fetched_at: float | None = None
        self._last_recheck: float | None = None

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def fetched_at(self) -> float | None:
        return self._fetched_at

    def fresh(self) -> bool:
        at = self._fetched_at
        return at is not None and self._clock() - at <= self.policy.stale_after

    def verdict(self, practice_id: str) -> Verdict:
        if not self.fresh():
            return Verdict.UNKNOWN
        if practice_id.upper() in self._ids:
            return Verdict.SUBSCRIBED
        return Verdict.NOT_LISTED

    def may_recheck(self) -> bool:
        """Claim an on-demand refresh: True at most once per ``recheck_interval``."""
        now = self._clock()
        last = self._last_recheck
        if last is not None and now - last < self.policy.recheck_interval:
            return False
        self._last_recheck = now
        return True

    def replace(self, practice_ids: Iterable[str]) -> Changes:
        """A fresh list; says which practices joined and which left since the last one (none
        are reported for the first list)."""
        first = self._fetched_at is None
        ids = {pid.upper(): pid for pid in practice_ids}
        added = () if first else tuple(ids[k] for k in ids if k not in self._ids)
        removed = tuple(self._ids[k] for k in self._ids if k not in ids)
        self._ids = ids
        self._fetched_at = self._clock()
        return Changes(added, removed)

    def ids(self) -> list[str]:
        return list(self._ids.values())
