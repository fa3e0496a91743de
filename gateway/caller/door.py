"""What a port's connections share: the connection cap, the drain flag and how refusals are told.

Both listeners (the proxy port's :class:`~gateway.caller.listener.ProxyListener` and the
admin port's aiohttp-based :class:`~gateway.caller.server.Listener`) keep one :class:`Door`.
Beyond ``max_connections`` a new connection is answered ``503 gateway_busy`` and closed at
once, with one warning when the limit is reached and one line when it is left, never a line
per connection (a flood must not become a log storm).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from gateway.caller.limits import DRAIN_QUIET_SECONDS, CallerLimits
from gateway.caller.refusals import new_request_id, raw_problem
from gateway.errors import GatewayBusy, GatewayError

# The caller edge's log channel (dashboards and tests select its lines by this name).
log = logging.getLogger("exact_gateway.listener")

Refusal = Callable[[GatewayError, str, str], None]  # error, request id, method label


class Drainable(Protocol):
    def close_if_idle(self, since: float = ...) -> None: ...


class Door:
    """One port's shared connection bookkeeping (module docstring)."""

    def __init__(
        self,
        limits: CallerLimits,
        *,
        name: str,
        on_refusal: Refusal | None = None,
        on_connections: Callable[[int], None] | None = None,
        on_refused_connection: Callable[[], None] | None = None,
    ) -> None:
        self.limits = limits
        self.name = name
        self.draining = False
        self.open_connections = 0
        self.refused_connections = 0
        self._saturated = False
        self._on_refusal = on_refusal
        self._on_connections = on_connections
        self._on_refused_connection = on_refused_connection

    def refusal(self, error: GatewayError, request_id: str, method: str) -> None:
        """A request refused before it reached the handler: counted and logged once."""
        if self._on_refusal is not None:
            self._on_refusal(error, request_id, method)
        else:
            log.info(
                "request refused",
                extra={
                    "fields": {
                        "event": "request",
                        "listener": self.name,
                        "status": error.status,
                        "error": error.reason,
                        "request_id": request_id,
                    }
                },
            )

    def internal_error(self, exc: BaseException | None) -> None:
        """A handler raised (the handlers catch everything, so this is a bug): said loudly,
        with the exception's type only (its message may quote a caller's bytes)."""
        log.error(
            "unexpected error in a request handler",
            extra={
                "fields": {
                    "event": "internal_error",
                    "listener": self.name,
                    "exception": type(exc).__name__ if exc else None,
                }
            },
        )

    def let_in(self, transport: asyncio.Transport) -> bool:
        """Count a new connection; one too many is answered ``503 gateway_busy`` and closed
        at once, before any parsing or task."""
        if self.admit():
            return True
        busy = GatewayBusy(
            "the gateway has too many connections open; try again shortly", retry_after=1
        )
        transport.write(raw_problem(busy, new_request_id()))
        transport.close()
        return False

    def admit(self) -> bool:
        """Count a new connection, or say it is one too many."""
        if self.open_connections >= self.limits.max_connections:
            self.refused_connections += 1
            if self._on_refused_connection is not None:
                self._on_refused_connection()
            if not self._saturated:
                self._saturated = True
                log.warning(
                    "connection limit reached: new connections are closed at once",
                    extra={
                        "fields": {
                            "event": "connection_limit",
                            "listener": self.name,
                            "limit": self.limits.max_connections,
                        }
                    },
                )
            return False
        self.open_connections += 1
        self._report()
        return True

    def released(self) -> None:
        self.open_connections -= 1
        self._report()
        # Hysteresis: one line when the flood is over, not one per connection at the edge.
        if self._saturated and self.open_connections <= self.limits.max_connections * 0.9:
            self._saturated = False
            log.info(
                "accepting connections again",
                extra={
                    "fields": {
                        "event": "connection_limit_cleared",
                        "listener": self.name,
                        "refused": self.refused_connections,
                    }
                },
            )

    def _report(self) -> None:
        if self._on_connections is not None:
            self._on_connections(self.open_connections)

    # -- draining ------------------------------------------------------------------------------

    def drainable(self) -> Iterable[Drainable]:
        """The port's open connections (each listener knows its own)."""
        raise NotImplementedError

    def now(self) -> float:
        raise NotImplementedError

    def start_draining(self, quiet: float = DRAIN_QUIET_SECONDS) -> None:
        """From now on every answer says ``Connection: close``; connections idle for ``quiet``
        seconds close now.

        One used more recently belongs to an active caller, whose next request may be on the
        wire already: closing under it would lose that request, so it gets its answer with
        ``Connection: close`` instead (or is closed with the listener if it stays idle).
        """
        self.draining = True
        since = self.now() - quiet
        for connection in list(self.drainable()):
            connection.close_if_idle(since=since)
