"""Breaker states as Prometheus metrics, computed at scrape time with bounded labels."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.resilience.breaker import State
from gateway.resilience.rules import Resilience

_STATE_VALUE = {State.CLOSED: 0, State.OPEN: 1, State.HALF_OPEN: 2}


class BreakerCollector(Collector):
    """Breaker states computed at scrape time, with bounded labels: a series per practice
    only while its breaker is not closed, and counts for the rest."""

    def __init__(self, resilience: Resilience) -> None:
        self._resilience = resilience

    def collect(self) -> Iterator[Metric]:
        per_practice = GaugeMetricFamily(
            "exact_gateway_circuit_breaker_state",
            "State of each practice breaker that is not closed (1 open, 2 half-open).",
            labels=["practice_id"],
        )
        for breaker in self._resilience.breakers.not_closed():
            per_practice.add_metric([breaker.key], _STATE_VALUE[breaker.state])
        yield per_practice
        counts = GaugeMetricFamily(
            "exact_gateway_circuit_breakers",
            "Practice breakers held, by state.",
            labels=["state"],
        )
        for state, count in self._resilience.breakers.counts().items():
            counts.add_metric([state], count)
        yield counts
        yield GaugeMetricFamily(
            "exact_gateway_upstream_circuit_breaker_state",
            "State of the partner-wide breaker (0 closed, 1 open, 2 half-open).",
            value=_STATE_VALUE[self._resilience.upstream.state],
        )
