"""The gateway's lifecycle state and the signals that end it.

One :class:`GatewayState` holds what every part reads about the gateway as a whole: whether it
is draining, and how many requests are in flight. The in-flight count is the bulkhead's own
(the one the concurrency limits enforce), so the ``inflight_requests`` gauge, ``/status`` and
``/breakers`` can never disagree.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from gateway.policies import LifecyclePolicy
from gateway.resilience.bulkhead import Bulkhead

log = logging.getLogger("exact_gateway.app")
T = TypeVar("T")
# Young-generation collections every 700 allocations (the default) run several times per
# request; every 20,000 they still bound memory, and the frozen start-up objects are skipped.
GC_THRESHOLDS = (20_000, 20, 20)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when asked for and available (Linux, installed), else None (asyncio's)."""
    if choice != "uvloop" or not sys.platform.startswith("linux"):
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], event_loop: str) -> T:
    """Run ``main`` to its end on the chosen event loop (``asyncio.run`` otherwise)."""
    with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner:
        return runner.run(main)


def settle_memory() -> None:
    """After start-up: move every object that lives as long as the process out of the
    collector's sight (``gc.freeze``), and collect young objects less often, so the full
    collections that showed in p99 have only a request's garbage to walk."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class GatewayState:
    __slots__ = ("_bulkhead", "draining", "environment", "policy")

    def __init__(self, environment: str, policy: LifecyclePolicy, bulkhead: Bulkhead) -> None:
        self.environment = environment
        self.policy = policy
        self.draining = False
        self._bulkhead = bulkhead

    @property
    def inflight(self) -> int:
        return self._bulkhead.inflight

    @property
    def ready_requires_usable_token(self) -> bool:
        return self.policy.ready_requires_usable_token


def _sighup() -> None:
    log.info(
        "SIGHUP ignored: settings are read once at start (restart to change them); the"
        " secret file is re-read on its own when it changes",
        extra={"fields": {"event": "sighup"}},
    )


async def until_signalled() -> None:
    """Return when the process gets SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C).

    SIGHUP, whose default action would kill the process with no drain, is logged and ignored.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _sighup)
    await stop.wait()
