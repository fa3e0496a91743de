"""The gateway's lifecycle state and the signals that end it.

One :class:`GatewayState` holds what every part reads about the gateway as a whole: whether it
is draining, and how many requests are in flight. The in-flight count is the bulkhead's own
(the one the concurrency limits enforce), so the ``inflight_requests`` gauge, ``/status`` and
``/breakers`` can never disagree.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from gateway.policies import LifecyclePolicy
from gateway.resilience.bulkhead import Bulkhead

log = logging.getLogger("exact_gateway.app")


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
