"""A bounded map whose entries expire a fixed time after they were last written.

The practice breakers and the version book each keep one entry per practice id, and they are
read on every request: the breaker table on every attempt, the version book at admission and
when an answer passes through. ``cachetools.TTLCache`` did that in pure Python with a
context-managed timer, a linked list and an LRU reorder on every read, about 5% of a proxied
request's CPU. Here one ``OrderedDict`` (its order and ``move_to_end``/``popitem`` are C,
O(1)) holds ``key -> (expires, value)`` in write order. Because every entry lives the same
``ttl``, write order is expiry order, so expired entries are dropped from the front on each
write, and a read is a dictionary lookup and one clock read.

Memory is bounded by ``max_entries``: a write that would exceed it first evicts the entry
written longest ago, or, when ``evictable`` is given, the oldest among the ``scan`` oldest
entries that it approves (the breaker table spares breakers with recent failures), falling
back to the oldest. Time comes from an injected clock, so tests drive expiry without waiting.
Expired entries are never returned, whether or not they have been dropped yet.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# How many of the oldest entries eviction looks at for one ``evictable`` approves: a bound on
# the work one insert can cause, however the table is filled.
EVICTION_SCAN = 64


class ExpiringMap(Generic[K, V]):
    """``key -> value`` for ``ttl`` seconds after each write, at most ``max_entries``."""

    __slots__ = ("_clock", "_entries", "_evictable", "_max", "_scan", "_ttl")

    def __init__(
        self,
        max_entries: int,
        ttl: float,
        clock: Callable[[], float],
        *,
        evictable: Callable[[V, float], bool] | None = None,
        scan: int = EVICTION_SCAN,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._ttl = ttl
        self._clock = clock
        self._evictable = evictable
        self._scan = scan
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value, or None when absent or expired. Never reorders or writes."""
        entry = self._entries.get(key)
        if entry is None or not self._clock() < entry[0]:
            return None
        return entry[1]

    def __contains__(self, key: K) -> bool:
        entry = self._entries.get(key)
        return entry is not None and self._clock() < entry[0]

    def __setitem__(self, key: K, value: V) -> None:
        """Write ``value``; it expires ``ttl`` seconds from now (a rewrite restarts it)."""
        now = self._clock()
        entries = self._entries
        self._expire(now)
        if key in entries:
            entries[key] = (now + self._ttl, value)
            entries.move_to_end(key)
            return
        if len(entries) >= self._max:
            self._evict(now)
        entries[key] = (now + self._ttl, value)

    def pop(self, key: K) -> V | None:
        """Remove ``key``; its value if it had not expired, else None."""
        entry = self._entries.pop(key, None)
        if entry is None or not self._clock() < entry[0]:
            return None
        return entry[1]

    def values(self) -> list[V]:
        """The values that have not expired, oldest written first (a snapshot)."""
        now = self._clock()
        return [value for expires, value in self._entries.values() if now < expires]

    def __iter__(self) -> Iterator[K]:
        """The keys that have not expired, oldest written first (a snapshot)."""
        now = self._clock()
        return iter([key for key, (expires, _) in self._entries.items() if now < expires])

    def __len__(self) -> int:
        """Entries that have not expired."""
        self._expire(self._clock())
        return len(self._entries)

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            key = next(iter(entries))
            if now < entries[key][0]:
                return
            del entries[key]

    def _evict(self, now: float) -> None:
        entries = self._entries
        evictable = self._evictable
        if evictable is not None:
            for index, (key, (_, value)) in enumerate(entries.items()):
                if index >= self._scan:
                    break
                if evictable(value, now):
                    del entries[key]  # the loop ends here: no iteration after the change
                    return
        entries.popitem(last=False)
