"""The composition root: build every part of one gateway from the settings, run it, stop it.

:meth:`Gateway.start` is the one factory. It turns the settings into frozen policies once,
builds every part (metrics, defences, token source, idempotency store, upstream clients,
listeners) with one clock and one random source from the caller, and hands back a whole
gateway. Everything that needs undoing (sockets, client sessions, runners, the token task)
is entered into one ``AsyncExitStack`` as it is started, so a start that fails half-way
unwinds exactly what it began, and :meth:`Gateway.shutdown` unwinds the rest in reverse
order. ``exact-gateway check`` opens the same upstream clients (:func:`open_clients`).

Shutdown order (README "Shutdown"): readiness turns false at once; the proxy keeps accepting
for ``SHUTDOWN_GRACE_SECONDS`` (Kubernetes needs a moment to take the pod out of its
endpoints); then the listener closes and in-flight requests get up to ``DRAIN_SECONDS`` to
finish; the admin port answers until the very end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import resource
import socket
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway import __version__
from gateway.admin import build_admin_app
from gateway.admin_access import AdminAccess
from gateway.caller import (
    CallerLimits,
    Listener,
    ProxyListener,
    connection_cap,
    on_response_prepare,
)
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import ConfigError
from gateway.history import History
from gateway.idempotency import IdempotencyStore
from gateway.lifecycle import GatewayState, settle_memory, until_signalled
from gateway.metrics import Metrics, build_metrics
from gateway.policies import Policies
from gateway.practices.watch import PracticeWatch
from gateway.proxy import Proxy
from gateway.resilience import BreakerCollector, Resilience
from gateway.sandbox_mode import sandbox_for
from gateway.settings import Settings
from gateway.token_client import TokenClient
from gateway.tokens import TokenPolicy, TokenSource
from gateway.tracing import start_tracing
from gateway.upstream import PoolCollector, Upstream, build_client

if TYPE_CHECKING:
    # The fleet (and the redis package, which loads OpenTelemetry when it is installed) is
    # imported only when REDIS_URL or STATE_FILE turns it on.
    from gateway.fleet.member import FleetMember

log = logging.getLogger("exact_gateway.app")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one (tests read it back)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)


@dataclass(frozen=True, slots=True)
class Clients:
    """The gateway's two outbound clients: the identity server's and the EXACT API's."""

    token_client: TokenClient
    upstream: Upstream


async def open_clients(
    settings: Settings, policies: Policies, stack: contextlib.AsyncExitStack
) -> Clients:
    """Open both clients, their sessions entered into ``stack`` (closed when it unwinds)."""
    # The EXACT API: the gateway's own desync-proof HTTP/1.1 client (gateway/http1).
    api = Upstream(
        build_client(
            settings.resolved_api_url(),
            connect_timeout=settings.connect_timeout_seconds,
            egress=settings.egress,
        ),
        settings.attempt_timeout_seconds,
    )
    stack.push_async_callback(api.close)
    # The identity server gets a session of its own: ordinary client defaults, and its
    # slowness never queues behind API traffic. Same CA bundle and egress proxy.
    identity_session = await stack.enter_async_context(
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=settings.egress.ssl_context()),
            cookie_jar=aiohttp.DummyCookieJar(),
            proxy=settings.egress.proxy,
        )
    )
    return Clients(
        TokenClient(policies.credentials, identity_session),
        api,
    )


class Gateway:
    """One running gateway: listeners, clients, token source, defences and their state.

    Built only by :meth:`start`; an async context manager whose exit drains and stops it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        state: GatewayState,
        metrics: Metrics,
        tokens: TokenSource,
        resilience: Resilience,
        history: History,
        practices: PracticeWatch,
        proxy: Proxy,
        listener: ProxyListener,
        fleet: FleetMember | None,
        proxy_port: int,
        admin_port: int,
        stack: contextlib.AsyncExitStack,
    ) -> None:
        self.settings = settings
        self.state = state
        self.metrics = metrics
        self.tokens = tokens
        self.resilience = resilience
        self.history = history
        self.practices = practices
        self.proxy = proxy
        self.listener = listener
        self.fleet = fleet
        self.proxy_port = proxy_port
        self.admin_port = admin_port
        self._stack = stack
        self._stopped = False

    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        token_policy: TokenPolicy | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> Gateway:
        """Build and start a gateway; on any failure, undo what was started and re-raise."""
        policies = settings.policies()
        # Jitter, not secrecy: an ordinary PRNG, seeded from the OS so replicas differ.
        rng = rng if rng is not None else random.Random()  # noqa: S311
        metrics = build_metrics(settings.environment.value, registry, clock.wall)
        resilience = Resilience(policies.resilience, metrics, clock=clock, rng=rng)
        state = GatewayState(settings.environment.value, policies.lifecycle, resilience.bulkhead)
        metrics.inflight.set_function(lambda: state.inflight)
        metrics.registry.register(BreakerCollector(resilience))
        history = History(clock.monotonic, clock.wall)
        resilience.watch_upstream(history.upstream_breaker_changed)
        async with contextlib.AsyncExitStack() as stack:
            # Bind first: a port already in use fails the start before anything else is built.
            admin_sock = listen(settings.admin_host, settings.admin_port)
            stack.callback(admin_sock.close)
            proxy_sock = listen(settings.host, settings.port)
            stack.callback(proxy_sock.close)
            clients = await open_clients(settings, policies, stack)
            # Off unless OTEL_* ask; shut down after the proxy has drained (spans flushed).
            tracing = start_tracing(settings.tracing, settings.resolved_api_url())
            stack.push_async_callback(tracing.shutdown)
            metrics.registry.register(PoolCollector(clients.upstream))
            tokens = TokenSource(
                clients.token_client,
                metrics,
                token_policy if token_policy is not None else policies.tokens,
                clock=clock,
                rng=rng,
            )
            tokens.watch(history.token_changed)
            # The first token is fetched at once; /readyz turns true when it is held.
            refresh = asyncio.create_task(tokens.run(), name="token-refresh")
            stack.push_async_callback(_cancel, refresh)
            # What the gateway knows of each practice: admission, the ledger, own calls.
            practices = PracticeWatch(
                policies.practices,
                upstream=clients.upstream,
                tokens=tokens,
                resilience=resilience,
                clock=clock,
            )
            # Beyond one replica (off unless STATE_FILE or REDIS_URL is set): the snapshot is
            # read back before the listener opens, so a practice that was out when this
            # process stopped answers circuit_open from the first request.
            keys = IdempotencyStore(policies.idempotency, clock)
            fleet = None
            if policies.fleet.on:
                fleet = await _fleet_member(
                    settings, policies, metrics, resilience, practices, clock, keys
                )
                fleet.restore()
                await fleet.start(stack)
            practices.start()
            stack.push_async_callback(practices.stop)
            proxy = Proxy(
                clients.upstream,
                tokens,
                metrics,
                resilience,
                policies.proxy,
                history=history,
                idempotency=keys if fleet is None else fleet.keys,
                practices=practices,
                tracing=tracing,
            )
            limits = fitted_to_fd_limit(policies.caller, settings.admin_max_connections)
            listener = ProxyListener(
                proxy,
                limits=limits,
                on_refusal=proxy.refused,
                on_connections=metrics.caller_connections.set,
                on_refused_connection=metrics.caller_connections_refused.inc,
            )
            admin_app = build_admin_app(
                metrics,
                tokens,
                resilience,
                history,
                state,
                practices=practices,
                fleet=fleet.status if fleet is not None else None,
                pause_editor=fleet.pauses if fleet is not None else None,
                access=AdminAccess.of(
                    settings.admin_introspection_from, settings.admin_allowed_hosts
                ),
            )
            admin_app.on_response_prepare.append(on_response_prepare)
            admin_runner = AdminRunner(admin_app, policies.admin_caller, shutdown_timeout=1)
            # Unwound in reverse of this order: the proxy listener (draining in-flight
            # requests) first, then the admin port, the practice watch, the fleet (its last
            # state-file save), the token task, tracing (spans flushed), the clients'
            # sessions, the sockets.
            await admin_runner.setup()
            stack.push_async_callback(admin_runner.cleanup)
            await web.SockSite(admin_runner, admin_sock).start()
            await listener.start(proxy_sock)
            stack.push_async_callback(listener.close, settings.drain_seconds)
            gateway = cls(
                settings,
                state=state,
                metrics=metrics,
                tokens=tokens,
                resilience=resilience,
                history=history,
                practices=practices,
                proxy=proxy,
                listener=listener,
                fleet=fleet,
                proxy_port=proxy_sock.getsockname()[1],
                admin_port=admin_sock.getsockname()[1],
                stack=stack.pop_all(),
            )
        log.info(
            "listening",
            extra={
                "fields": {
                    "event": "start",
                    "version": __version__,
                    "environment": settings.environment.value,
                    "api_url": settings.resolved_api_url(),
                    "proxy": f"{settings.host}:{gateway.proxy_port}",
                    "admin": f"{settings.admin_host}:{gateway.admin_port}",
                }
            },
        )
        return gateway

    @property
    def draining(self) -> bool:
        return self.state.draining

    @property
    def inflight(self) -> int:
        return self.state.inflight

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    async def shutdown(self) -> None:
        """Drain and stop (see the module docstring for the order); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.state.draining = True
        # Every answer from now on says Connection: close, and idle keep-alive connections
        # close now, so no caller is left holding a connection the listener is about to drop.
        self.listener.start_draining()
        log.info("draining", extra={"fields": {"event": "drain", "inflight": self.inflight}})
        await asyncio.sleep(self.state.policy.shutdown_grace)
        # Closes the listener and waits up to DRAIN_SECONDS for in-flight handlers, then
        # undoes everything else in reverse start order.
        await self._stack.aclose()
        log.info("stopped", extra={"fields": {"event": "stop"}})


async def _fleet_member(  # noqa: PLR0917 (the parts the fleet hooks into, in build order)
    settings: Settings,
    policies: Policies,
    metrics: Metrics,
    resilience: Resilience,
    practices: PracticeWatch,
    clock: Clock,
    keys: IdempotencyStore,
) -> FleetMember:
    from gateway.fleet.member import build_member  # noqa: PLC0415 - only when it is on
    from gateway.fleet.namespace import gateway_identity  # noqa: PLC0415

    fleet = policies.fleet
    try:
        secret = await policies.credentials.read_secret()
    except ConfigError:
        # The token source reports the missing secret; keys then stay local (no shared HMAC).
        secret = ""
    return build_member(
        identity=gateway_identity(settings.environment.value, settings.client_id),
        state_file_path=fleet.state_file,
        save_interval=fleet.save_interval,
        redis_url=fleet.redis_url if secret else None,
        redis_timeout=fleet.redis_timeout,
        heartbeat=fleet.heartbeat,
        client_secret=secret,
        registry=metrics.registry,
        resilience=resilience,
        practices=practices,
        clock=clock,
        local_keys=keys,
        idempotency_ttl=policies.idempotency.ttl,
    )


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def fitted_to_fd_limit(limits: CallerLimits, admin_connections: int) -> CallerLimits:
    """The proxy port's caller-edge bounds, its connection cap kept under the fd limit."""
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if fd_limit == resource.RLIM_INFINITY:
        fd_limit = 2**20
    cap = connection_cap(limits.max_connections, fd_limit, admin_connections)
    if cap < limits.max_connections:
        log.warning(
            "MAX_CONNECTIONS lowered to fit the open-file limit",
            extra={
                "fields": {
                    "event": "connection_limit_lowered",
                    "max_connections": cap,
                    "open_file_limit": fd_limit,
                }
            },
        )
    return dataclasses.replace(limits, max_connections=cap)


class AdminRunner(web.AppRunner):
    """The admin app behind the same bounded listener, with a connection cap of its own, so
    a flood of the proxy port cannot silence /healthz and a flood of this port cannot take
    the proxy's descriptors."""

    def __init__(self, app: web.Application, limits: CallerLimits, **kwargs: object) -> None:
        super().__init__(app, access_log=None, **kwargs)  # type: ignore[arg-type]
        self._limits = limits

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return Listener(
            plain.request_handler,
            limits=self._limits,
            request_factory=plain.request_factory,
            name="admin",
        )


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain and return."""
    async with sandbox_for(settings) as effective:
        gateway = await Gateway.start(effective)
        settle_memory()
        async with gateway:
            await until_signalled()
