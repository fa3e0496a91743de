"""The gateway's defences: breakers, retries with backoff, the retry budget, the bulkheads,
and the rules that say which of them an attempt's outcome concerns.

Pure: no aiohttp, no settings. Time comes from an injected :class:`gateway.clock.Clock`,
randomness from an injected ``random.Random``, numbers from a frozen
:class:`ResiliencePolicy` built once from the settings.
"""

from gateway.resilience.breaker import Admission, Breaker, BreakerPolicy, BreakerTable, State
from gateway.resilience.collector import BreakerCollector
from gateway.resilience.retry import RetryPolicy
from gateway.resilience.rules import Resilience, ResiliencePolicy, Ticket

__all__ = [
    "Admission",
    "Breaker",
    "BreakerCollector",
    "BreakerPolicy",
    "BreakerTable",
    "Resilience",
    "ResiliencePolicy",
    "RetryPolicy",
    "State",
    "Ticket",
]
