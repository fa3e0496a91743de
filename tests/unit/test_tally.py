"""The scrape-time tallies expose exactly what prometheus_client's own Counter and Histogram
would for the same observations: same text, line for line, ``_created`` values aside."""

from __future__ import annotations

import random
import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.metrics import ATTEMPT_BUCKETS, REQUEST_BUCKETS, build_metrics
from gateway.tally import CounterTally, HistogramCount, HistogramTally

_CREATED = re.compile(r"^(\S+_created(?:\{[^}]*\})?) \S+$", re.MULTILINE)


def _masked(registry: CollectorRegistry) -> str:
    """The exposition with each ``_created`` value (a wall time) replaced by a marker."""
    return _CREATED.sub(r"\1 CREATED", generate_latest(registry).decode())


def _observations(seed: int, count: int) -> list[tuple[tuple[str, str], float]]:
    """Label pairs and durations, with the worst values: exactly on a bound, just above and
    below it, zero, negative, huge and infinite."""
    rng = random.Random(seed)
    edges = [b for bound in REQUEST_BUCKETS for b in (bound, bound * (1 - 1e-12), bound + 1e-9)]
    edges += [0.0, -1.0, 1e300, float("inf"), 120.0, 121.0]
    labels = [("GET", "200"), ("POST", "503"), ("GET", "499"), ("DELETE", "404")]
    return [
        (rng.choice(labels), rng.choice(edges) if rng.random() < 0.5 else rng.expovariate(20))
        for _ in range(count)
    ]


def test_histogram_and_its_count_match_prometheus_client() -> None:
    """A HistogramTally plus the HistogramCount read from it give the same text as a Counter
    and a Histogram updated together, for 5,000 observations including every edge value."""
    reference, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("demo_total", "Demo requests.", ["method", "code"], registry=reference)
    histogram = Histogram(
        "demo_seconds", "Demo.", ["method", "code"], buckets=REQUEST_BUCKETS, registry=reference
    )
    tally = HistogramTally(
        "demo_seconds", "Demo.", ["method", "code"], buckets=REQUEST_BUCKETS, wall=lambda: 1.0
    )
    ours.register(HistogramCount(tally, "demo_total", "Demo requests.", ["method", "code"]))
    ours.register(tally)
    for labels, seconds in _observations(seed=9, count=5000):
        counter.labels(*labels).inc()
        histogram.labels(*labels).observe(seconds)
        tally.labels(*labels).observe(seconds)
    expected = _masked(reference)
    assert "demo_seconds_bucket" in expected  # the comparison is about real samples
    assert _masked(ours) == expected


def test_counter_matches_prometheus_client() -> None:
    """A CounterTally gives the same text as a Counter with the same increments, and its
    ``_created`` is the injected wall time of the child's first use."""
    reference, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("demo_attempts_total", "Demo.", ["route", "outcome"], registry=reference)
    tally = CounterTally("demo_attempts_total", "Demo.", ["route", "outcome"], wall=lambda: 42.5)
    ours.register(tally)
    rng = random.Random(3)
    for _ in range(1000):
        labels = (rng.choice(["a", "b", "c"]), rng.choice(["200", "upstream_timeout"]))
        counter.labels(*labels).inc()
        tally.labels(*labels).value += 1
    assert _masked(ours) == _masked(reference)
    assert 'demo_attempts_created{outcome="200",route="a"} 42.5' in generate_latest(ours).decode()


def test_gateway_families_have_the_contract_shape() -> None:
    """build_metrics exposes the per-request families with their contract names, help, types
    and bucket bounds, in the order they always had."""
    reference = CollectorRegistry()
    requests = Counter(
        "exact_gateway_requests_total",
        "Requests answered to callers, by method, route template and status code.",
        ["method", "route", "status_code"],
        registry=reference,
    )
    duration = Histogram(
        "exact_gateway_request_duration_seconds",
        "Time callers waited for the response headers, retries included.",
        ["method", "route", "status_code"],
        buckets=REQUEST_BUCKETS,
        registry=reference,
    )
    attempts = Histogram(
        "exact_gateway_upstream_attempt_duration_seconds",
        "Time from sending an attempt to its response headers.",
        ["route"],
        buckets=ATTEMPT_BUCKETS,
        registry=reference,
    )
    metrics = build_metrics("test", CollectorRegistry(), wall=lambda: 7.0)
    for seconds in (0.25, 0.0, 31.0):
        requests.labels("GET", "other", "400").inc()
        duration.labels("GET", "other", "400").observe(seconds)
        metrics.request_duration.labels("GET", "other", "400").observe(seconds)
        attempts.labels("other").observe(seconds)
        metrics.upstream_attempt_duration.labels("other").observe(seconds)
    text = _masked(metrics.registry)
    for line in _masked(reference).splitlines():
        assert line in text, line
    # The text format shows each ``_created`` as a gauge family of its own: left out here.
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    families = [name for name in types if not name.endswith("_created")]
    per_request = [
        "exact_gateway_requests_total",
        "exact_gateway_request_duration_seconds",
        "exact_gateway_inflight_requests",
        "exact_gateway_upstream_attempts_total",
        "exact_gateway_upstream_attempt_duration_seconds",
    ]
    start = families.index(per_request[0])
    assert families[start : start + len(per_request)] == per_request
    assert families.index("exact_gateway_rejected_requests_total") == 1 + families.index(
        "exact_gateway_retries_skipped_total"
    )


@pytest.mark.parametrize("buckets", [(), (1.0, 0.5), (0.5, 0.5)])
def test_histogram_refuses_bad_buckets(buckets: tuple[float, ...]) -> None:
    """Bounds that are empty, descending or repeated are refused when the family is made."""
    with pytest.raises(ValueError, match="ascending"):
        HistogramTally("x_seconds", "x", [], buckets=buckets, wall=lambda: 0.0)


def test_wrong_label_count_is_refused() -> None:
    """A child asked for with too few label values is an error, not a silent new series."""
    tally = CounterTally("x_total", "x", ["a", "b"], wall=lambda: 0.0)
    with pytest.raises(ValueError, match="labels"):
        tally.labels("only-one")
