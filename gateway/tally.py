"""Per-request metrics kept as plain numbers, turned into Prometheus families at scrape time.

prometheus_client's ``Counter.inc`` and ``Histogram.observe`` take a lock and walk the
bucket bounds in Python on every call: about 3 % of a proxied request's CPU and more of a
gateway-made answer's. The request path runs on one event loop thread and the scrape
(``/metrics``) runs on that same loop, so nothing here needs a lock: a request bumps an
integer in a list it resolved once per label combination, and the scrape, which happens
between two loop steps, reads a consistent picture.

Each tally is a prometheus_client :class:`~prometheus_client.registry.Collector` that yields
the family prometheus_client's own ``Counter`` or ``Histogram`` would have: same name, help,
type, labels, bucket bounds, ``le`` formatting, sample order, and a ``_created`` sample per
child (wall time when the child was first used) unless prometheus_client was told to leave
``_created`` out. The exposition for the same traffic is the same text, ``_created`` values
aside (``tests/unit/test_tally.py`` compares the two).

A request counter and its duration histogram share labels and are always updated together,
so :class:`HistogramCount` exposes the counter from the histogram's own counts: one update
per request instead of two.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import cast

from prometheus_client import metrics as _client_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import INF, floatToGoString

# The library's own formatting of an ``le`` bound (untyped there; the same function here).
_go_float = cast(Callable[[float], str], floatToGoString)

# prometheus_client's own switch (PROMETHEUS_DISABLE_CREATED_SERIES, read once at its import):
# follow it so these families and the library's agree on whether ``_created`` is exposed.
_USE_CREATED: bool = getattr(_client_metrics, "_use_created", True)


class Count:
    """One counter child: a number the request path adds to."""

    __slots__ = ("created", "value")

    def __init__(self, created: float) -> None:
        self.value = 0
        self.created = created


class Bins:
    """One histogram child: a count per bucket (not cumulative: the scrape adds them up),
    and the sum of what was observed."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...], created: float) -> None:
        self.bounds = bounds  # finite upper bounds, ascending; +Inf is the last count
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = created

    def observe(self, value: float) -> None:
        # The first bucket whose upper bound is >= value, as prometheus_client's ``observe``
        # (``value <= bound``) picks it; past the last bound, +Inf.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)


def _full_name(name: str, namespace: str) -> str:
    return f"{namespace}_{name}" if namespace else name


class _CounterFamily(Collector):
    """A labelled counter family exposed at scrape time from ``_counts()``."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], namespace: str
    ) -> None:
        self.name = _full_name(name, namespace)
        self._documentation = documentation
        self._labelnames = tuple(labelnames)

    def _counts(self) -> Iterator[tuple[tuple[str, ...], float, float]]:
        """(label values, value, created) for each child."""
        raise NotImplementedError

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self._documentation, labels=self._labelnames)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, value, created in self._counts():
            family.add_metric(values, value, created=_created(created))
        yield family


class CounterTally(_CounterFamily):
    """A labelled counter family whose children are :class:`Count` values."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        namespace: str = "",
        wall: Callable[[], float],
    ) -> None:
        super().__init__(name, documentation, labelnames, namespace)
        self._wall = wall
        self._children: dict[tuple[str, ...], Count] = {}

    def labels(self, *values: str) -> Count:
        """The child for these label values, made on first use (callers keep it)."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self.name} takes labels {self._labelnames}")
            child = self._children[values] = Count(self._wall())
        return child

    def _counts(self) -> Iterator[tuple[tuple[str, ...], float, float]]:
        for values, child in self._children.items():
            yield values, child.value, child.created


class HistogramTally(Collector):
    """A labelled histogram family whose children are :class:`Bins`."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        namespace: str = "",
        wall: Callable[[], float],
    ) -> None:
        bounds = tuple(float(bound) for bound in buckets)
        if bounds and bounds[-1] == INF:
            bounds = bounds[:-1]
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError("buckets must be distinct and ascending")
        self.name = _full_name(name, namespace)
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = bounds
        self._le = (*(_go_float(bound) for bound in bounds), _go_float(INF))
        self._wall = wall
        self._children: dict[tuple[str, ...], Bins] = {}

    def labels(self, *values: str) -> Bins:
        """The child for these label values, made on first use (callers keep it)."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self.name} takes labels {self._labelnames}")
            child = self._children[values] = Bins(self._bounds, self._wall())
        return child

    def children(self) -> Iterator[tuple[tuple[str, ...], Bins]]:
        """Every child with its label values, in the order they were first used."""
        return iter(list(self._children.items()))

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self._documentation, labels=self._labelnames)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, child in self._children.items():
            cumulative = 0
            buckets = []
            for le, count in zip(self._le, child.counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(values, buckets, child.sum)
            if _USE_CREATED:
                labels = dict(zip(self._labelnames, values, strict=True))
                family.samples.append(Sample(f"{self.name}_created", labels, child.created))
        yield family


class HistogramCount(_CounterFamily):
    """A counter family whose value per child is a histogram's count for the same labels:
    for a counter that is always incremented together with that histogram's ``observe``."""

    def __init__(
        self,
        histogram: HistogramTally,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        namespace: str = "",
    ) -> None:
        super().__init__(name, documentation, labelnames, namespace)
        self._histogram = histogram

    def _counts(self) -> Iterator[tuple[tuple[str, ...], float, float]]:
        for values, child in self._histogram.children():
            yield values, child.count, child.created


def _created(created: float) -> float | None:
    return created if _USE_CREATED else None
