"""Prometheus metrics, built by a factory into a registry the app owns (never the global one).

Labels are bounded and PHI-free by construction: methods outside a fixed set become
``other``, routes are templates from :mod:`gateway.routes`, statuses are numbers or a gateway
reason. A practice id never appears here except where the contract allows it (non-closed
breakers, added with the resilience work).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from gateway import __version__
from gateway.clock import SYSTEM_CLOCK
from gateway.outcome import RetryReason, SkipReason, help_list
from gateway.tally import CounterTally, HistogramCount, HistogramTally

NAMESPACE = "exact_gateway"
# Callers see retries and backoff inside one request, so their buckets reach the deadline.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True, slots=True)
class Metrics:
    registry: CollectorRegistry
    # The per-request families are tallies (gateway.tally): plain numbers the request path
    # bumps, read at scrape time. ``requests_total`` is the duration histogram's count.
    request_duration: HistogramTally
    inflight: Gauge
    upstream_attempts: CounterTally
    upstream_attempt_duration: HistogramTally
    token_requests: Counter
    token_request_duration: Histogram
    token_expiry: Gauge
    retries: Counter
    retries_skipped: Counter
    rejected: CounterTally
    breaker_transitions: Counter
    caller_connections: Gauge
    caller_connections_refused: Counter


_Registered = TypeVar("_Registered", CounterTally, HistogramTally, HistogramCount)


def build_metrics(
    environment: str,
    registry: CollectorRegistry | None = None,
    wall: Callable[[], float] = SYSTEM_CLOCK.wall,
) -> Metrics:
    """Create every metric family in a fresh registry (or the one given). ``wall`` stamps
    the ``_created`` samples of the per-request families."""
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    owner = registry

    def register(collector: _Registered) -> _Registered:
        owner.register(collector)
        return collector

    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)

    build_info = Gauge(
        "build_info",
        "Version of the running gateway; always 1.",
        ["version", "python_version", "environment"],
        namespace=NAMESPACE,
        registry=registry,
    )
    build_info.labels(__version__, platform.python_version(), environment).set(1)

    # Registered in the order the families have always been exposed in.
    request_duration = HistogramTally(
        "request_duration_seconds",
        "Time callers waited for the response headers, retries included.",
        ["method", "route", "status_code"],
        buckets=REQUEST_BUCKETS,
        namespace=NAMESPACE,
        wall=wall,
    )
    register(
        HistogramCount(
            request_duration,
            "requests_total",
            "Requests answered to callers, by method, route template and status code.",
            ["method", "route", "status_code"],
            namespace=NAMESPACE,
        )
    )
    return Metrics(
        registry=registry,
        request_duration=register(request_duration),
        inflight=Gauge(
            "inflight_requests",
            "Caller requests being handled right now.",
            namespace=NAMESPACE,
            registry=registry,
        ),
        upstream_attempts=register(
            CounterTally(
                "upstream_attempts_total",
                "Attempts sent to the EXACT API, by route template and outcome"
                " (status code, or a gateway reason when no answer came).",
                ["route", "outcome"],
                namespace=NAMESPACE,
                wall=wall,
            )
        ),
        upstream_attempt_duration=register(
            HistogramTally(
                "upstream_attempt_duration_seconds",
                "Time from sending an attempt to its response headers.",
                ["route"],
                buckets=ATTEMPT_BUCKETS,
                namespace=NAMESPACE,
                wall=wall,
            )
        ),
        token_requests=Counter(
            "token_requests_total",
            "Requests to the identity server's token endpoint, by result.",
            ["result"],
            namespace=NAMESPACE,
            registry=registry,
        ),
        token_request_duration=Histogram(
            "token_request_duration_seconds",
            "Duration of token endpoint requests.",
            buckets=TOKEN_BUCKETS,
            namespace=NAMESPACE,
            registry=registry,
        ),
        token_expiry=Gauge(
            "token_expiry_timestamp_seconds",
            "Unix time at which the current access token expires (0 when none is held).",
            namespace=NAMESPACE,
            registry=registry,
        ),
        retries=Counter(
            "retries_total",
            "Attempts repeated after a retryable outcome, by that outcome"
            f" ({help_list(RetryReason)}).",
            ["reason"],
            namespace=NAMESPACE,
            registry=registry,
        ),
        retries_skipped=Counter(
            "retries_skipped_total",
            "Retryable outcomes not retried, by the rule that stopped it"
            f" ({help_list(SkipReason)}).",
            ["reason"],
            namespace=NAMESPACE,
            registry=registry,
        ),
        rejected=register(
            CounterTally(
                "rejected_requests_total",
                "Requests answered with an error of the gateway's own, by reason.",
                ["reason"],
                namespace=NAMESPACE,
                wall=wall,
            )
        ),
        breaker_transitions=Counter(
            "circuit_breaker_transitions_total",
            "Circuit breaker state changes, by scope (practice or upstream) and new state.",
            ["scope", "state"],
            namespace=NAMESPACE,
            registry=registry,
        ),
        caller_connections=Gauge(
            "caller_connections",
            "Connections open on the proxy port.",
            namespace=NAMESPACE,
            registry=registry,
        ),
        caller_connections_refused=Counter(
            "caller_connections_refused_total",
            "Connections to the proxy port closed at once because MAX_CONNECTIONS were open.",
            namespace=NAMESPACE,
            registry=registry,
        ),
    )
