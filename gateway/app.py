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
import logging
import random
import resource
import socket
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway import __version__
from gateway.admin import build_admin_app
from gateway.admin_access import AdminAccess
from gateway.caller import (
    CallerLimits,
    Listener,
    connection_cap,
    on_response_prepare,
)
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.history import History
from gateway.idempotency import IdempotencyStore
from gateway.lifecycle import GatewayState, settle_memory, until_signalled
from gateway.metrics import Metrics, build_metrics
from gateway.policies import Policies
from gateway.proxy import Proxy
from gateway.resilience import BreakerCollector, Resilience
from gateway.sandbox_mode import sandbox_for
from gateway.settings import Settings
from gateway.token_client import TokenClient
from gateway.tokens import TokenPolicy, TokenSource
from gateway.upstream import PoolCollector, Upstream, build_client

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
        proxy: Proxy,
        listener: Listener,
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
        self.proxy = proxy
        self.listener = listener
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
        metrics = build_metrics(settings.environment.value, registry)
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
            proxy = Proxy(
                clients.upstream,
                tokens,
                metrics,
                resilience,
                policies.proxy,
                history=history,
                idempotency=IdempotencyStore(policies.idempotency, clock),
            )
            limits = caller_limits(settings)
            listener = Listener(
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
                access=AdminAccess.of(
                    settings.admin_introspection_from, settings.admin_allowed_hosts
                ),
            )
            admin_app.on_response_prepare.append(on_response_prepare)
            admin_runner = AdminRunner(
                admin_app,
                CallerLimits(
                    head_timeout=limits.head_timeout,
                    body_idle=limits.body_idle,
                    write_idle=limits.write_idle,
                    keepalive_idle=limits.keepalive_idle,
                    max_head_bytes=limits.max_head_bytes,
                    max_target_bytes=limits.max_target_bytes,
                    max_connections=settings.admin_max_connections,
                ),
                shutdown_timeout=1,
            )
            # Unwound in reverse: the proxy listener (draining in-flight requests) first, then
            # the admin port, the token task, the clients' sessions, the sockets.
            await admin_runner.setup()
            stack.push_async_callback(admin_runner.cleanup)
            proxy_runner = web.ServerRunner(listener, shutdown_timeout=settings.drain_seconds)
            await proxy_runner.setup()
            stack.push_async_callback(proxy_runner.cleanup)
            await web.SockSite(admin_runner, admin_sock).start()
            await web.SockSite(proxy_runner, proxy_sock).start()
            gateway = cls(
                settings,
                state=state,
                metrics=metrics,
                tokens=tokens,
                resilience=resilience,
                history=history,
                proxy=proxy,
                listener=listener,
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


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def caller_limits(settings: Settings) -> CallerLimits:
    """The proxy port's caller-edge bounds, the connection cap kept under the fd limit."""
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if fd_limit == resource.RLIM_INFINITY:
        fd_limit = 2**20
    cap = connection_cap(settings.max_connections, fd_limit, settings.admin_max_connections)
    if cap < settings.max_connections:
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
    return CallerLimits(
        head_timeout=settings.request_head_timeout_seconds,
        body_idle=settings.request_body_idle_seconds,
        write_idle=settings.response_write_idle_seconds,
        keepalive_idle=settings.keepalive_idle_seconds,
        max_head_bytes=settings.max_request_head_bytes,
        max_target_bytes=settings.max_target_bytes,
        max_connections=cap,
    )


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
