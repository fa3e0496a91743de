"""ExpiringMap: entries live ``ttl`` seconds from their last write, bounded in number."""

from __future__ import annotations

import pytest

from gateway.expiring import ExpiringMap
from tests.fakes import FakeClock


def test_an_entry_lives_exactly_ttl_seconds_from_its_last_write() -> None:
    clock = FakeClock(0.0)
    entries: ExpiringMap[str, int] = ExpiringMap(10, 5.0, clock)
    entries["a"] = 1
    clock.now = 4.999
    assert entries.get("a") == 1
    assert "a" in entries
    entries["a"] = 2  # a rewrite restarts its time
    clock.now = 9.0
    assert entries.get("a") == 2
    clock.now = 9.999
    assert (entries.get("a"), "a" in entries, len(entries)) == (None, False, 0)


def test_reads_never_extend_an_entrys_life() -> None:
    clock = FakeClock(0.0)
    entries: ExpiringMap[str, int] = ExpiringMap(10, 5.0, clock)
    entries["a"] = 1
    for step in range(1, 5):
        clock.now = step
        assert entries.get("a") == 1
    clock.now = 5.0
    assert entries.get("a") is None


def test_expired_entries_are_never_returned_by_any_view() -> None:
    clock = FakeClock(0.0)
    entries: ExpiringMap[str, int] = ExpiringMap(10, 5.0, clock)
    entries["old"] = 1
    clock.now = 3.0
    entries["new"] = 2
    clock.now = 6.0
    assert (entries.values(), list(entries), len(entries)) == ([2], ["new"], 1)
    assert entries.pop("old") is None
    assert entries.pop("new") == 2
    assert entries.pop("new") is None


def test_the_bound_evicts_the_entry_written_longest_ago() -> None:
    """A flood of new keys keeps the map at its bound; a rewritten key counts as new."""
    clock = FakeClock(0.0)
    entries: ExpiringMap[str, int] = ExpiringMap(3, 100.0, clock)
    for key in "abc":
        entries[key] = 0
    entries["a"] = 1  # now the most recently written
    entries["d"] = 0
    assert list(entries) == ["c", "a", "d"]
    for i in range(10_000):
        entries[f"k{i}"] = i
    assert len(entries) == 3
    assert list(entries) == ["k9997", "k9998", "k9999"]


def test_eviction_spares_what_evictable_refuses_within_the_scan() -> None:
    """The oldest approved entry goes; when none of the ``scan`` oldest is approved, the
    oldest goes anyway (the bound always holds), and the new entry is never the victim."""
    clock = FakeClock(0.0)
    entries: ExpiringMap[str, str] = ExpiringMap(
        3, 100.0, clock, evictable=lambda value, now: value != "keep", scan=2
    )
    entries["k1"] = "keep"
    entries["e1"] = "evict"
    entries["e2"] = "evict"
    entries["n1"] = "evict"
    assert list(entries) == ["k1", "e2", "n1"]
    entries["k2"] = "keep"  # scan sees k1 (kept), e2 (evicted)
    assert list(entries) == ["k1", "n1", "k2"]
    entries["k3"] = "keep"  # k1 kept, n1 evicted
    entries["k4"] = "keep"  # k1 and k2 both kept: the oldest, k1, goes anyway
    assert list(entries) == ["k2", "k3", "k4"]


def test_evictable_is_told_the_time() -> None:
    clock = FakeClock(7.0)
    seen: list[float] = []

    def evictable(value: int, now: float) -> bool:
        seen.append(now)
        return True

    entries: ExpiringMap[str, int] = ExpiringMap(1, 100.0, clock, evictable=evictable)
    entries["a"] = 1
    entries["b"] = 2
    assert (seen, list(entries)) == ([7.0], ["b"])


def test_a_map_holds_at_least_one_entry() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ExpiringMap(0, 1.0, FakeClock(0.0))
