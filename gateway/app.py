"""Assemble a running gateway (and, for the sandbox environment, its simulator) and run it.

:class:`Gateway` owns everything one gateway holds (sessions, token source, metrics registry,
listeners), so two gateways can run in one process, as the tests do. :func:`serve` is the
``exact-gateway serve`` command: start, wait for SIGTERM or SIGINT, drain, exit.

Shutdown order (shared/product.md, "Lifecycle"): readiness turns false at once; the proxy
keeps accepting for ``SHUTDOWN_GRACE_SECONDS`` (Kubernetes needs a moment to take the pod out
of its endpoints); then the listener closes and in-flight requests get up to
``DRAIN_SECONDS`` to finish; the admin port answers until the very end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

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
from gateway.idempotency import IdempotencyStore
from gateway.identity import IdentityClient, TokenConfig
from gateway.metrics import Metrics, build_metrics
from gateway.proxy import Proxy
from gateway.resilience import BreakerCollector, Resilience
from gateway.settings import Environment, SandboxServerSettings, Settings
from gateway.status import RecentRates
from gateway.tokens import TokenPolicy, TokenSource
from gateway.upstream import Upstream, build_session

log = logging.getLogger("exact_gateway.app")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one (tests read it back)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)


class Gateway:
    """One gateway: proxy and admin listeners, the upstream pool and the token source."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        token_policy: TokenPolicy | None = None,
    ) -> None:
        self.settings = settings
        self._token_policy = (
            token_policy
            if token_policy is not None
            else TokenPolicy(
                retry_base=settings.token_retry_base_seconds,
                retry_cap=settings.token_retry_max_seconds,
            )
        )
        self._background: list[asyncio.Task[None]] = []
        self.metrics: Metrics = build_metrics(settings.environment.value, registry)
        self._draining = False
        self._admin_runner: web.AppRunner | None = None
        self._proxy_runner: web.ServerRunner | None = None
        self._sessions: list[aiohttp.ClientSession] = []
        self.proxy_port = 0
        self.admin_port = 0

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def environment(self) -> str:
        return self.settings.environment.value

    @property
    def inflight(self) -> int:
        return self.proxy.inflight

    @property
    def ready_requires_usable_token(self) -> bool:
        return self.settings.ready_requires_usable_token

    async def start(self) -> None:
        settings = self.settings
        api_url = settings.resolved_api_url()
        # Bind first: a port already in use fails the start before anything else is built.
        admin_sock = listen(settings.admin_host, settings.admin_port)
        proxy_sock = listen(settings.host, settings.port)
        self.admin_port = admin_sock.getsockname()[1]
        self.proxy_port = proxy_sock.getsockname()[1]
        api_session = build_session(
            connect_timeout=settings.connect_timeout_seconds,
            attempt_timeout=settings.attempt_timeout_seconds,
            egress=settings.egress,
        )
        # The identity server gets a session of its own: ordinary client defaults, and its
        # slowness never queues behind API traffic. Same CA bundle and egress proxy.
        identity_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=settings.egress.ssl_context()),
            cookie_jar=aiohttp.DummyCookieJar(),
            proxy=settings.egress.proxy,
        )
        self._sessions = [api_session, identity_session]
        self.tokens = TokenSource(
            IdentityClient(TokenConfig.from_settings(settings), identity_session),
            self.metrics,
            self._token_policy,
        )
        self.resilience = Resilience(settings, self.metrics)
        self.rates = RecentRates()
        self.metrics.registry.register(BreakerCollector(self.resilience))
        self.proxy = Proxy(
            Upstream(api_session, api_url, settings.attempt_timeout_seconds),
            self.tokens,
            self.metrics,
            self.resilience,
            attempt_timeout=settings.attempt_timeout_seconds,
            deadline=settings.deadline_seconds,
            replay_buffer_bytes=settings.replay_buffer_bytes,
            rates=self.rates,
            idempotency=IdempotencyStore(
                ttl=settings.idempotency_ttl_seconds,
                max_keys=settings.idempotency_max_keys,
                max_response_bytes=settings.idempotency_max_response_bytes,
                max_stored_bytes=settings.idempotency_max_stored_bytes,
                clock=self.resilience.clock,
            ),
        )

        limits = caller_limits(settings)
        self.listener = Listener(
            self.proxy,
            limits=limits,
            on_refusal=self.proxy.refused,
            on_connections=self.metrics.caller_connections.set,
            on_refused_connection=self.metrics.caller_connections_refused.inc,
        )
        admin_app = build_admin_app(
            self.metrics,
            self.tokens,
            self.resilience,
            self.rates,
            self,
            access=AdminAccess.of(settings.admin_introspection_from, settings.admin_allowed_hosts),
        )
        admin_app.on_response_prepare.append(on_response_prepare)
        self._admin_runner = AdminRunner(
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
        self._proxy_runner = web.ServerRunner(
            self.listener, shutdown_timeout=settings.drain_seconds
        )
        await self._admin_runner.setup()
        await self._proxy_runner.setup()
        await web.SockSite(self._admin_runner, admin_sock).start()
        await web.SockSite(self._proxy_runner, proxy_sock).start()
        # The first token is fetched at once; /readyz turns true when it is held.
        self._background.append(asyncio.create_task(self.tokens.run(), name="token-refresh"))
        log.info(
            "listening",
            extra={
                "fields": {
                    "event": "start",
                    "version": __version__,
                    "environment": settings.environment.value,
                    "api_url": api_url,
                    "proxy": f"{settings.host}:{self.proxy_port}",
                    "admin": f"{settings.admin_host}:{self.admin_port}",
                }
            },
        )

    async def shutdown(self) -> None:
        """Drain and stop (see the module docstring for the order)."""
        self._draining = True
        # Every answer from now on says Connection: close, and idle keep-alive connections
        # close now, so no caller is left holding a connection the listener is about to drop.
        self.listener.start_draining()
        log.info(
            "draining",
            extra={"fields": {"event": "drain", "inflight": self.proxy.inflight}},
        )
        await asyncio.sleep(self.settings.shutdown_grace_seconds)
        # Closes the listener, then waits up to DRAIN_SECONDS for in-flight handlers.
        if self._proxy_runner is not None:
            await self._proxy_runner.cleanup()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for session in self._sessions:
            await session.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        log.info("stopped", extra={"fields": {"event": "stop"}})


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


@dataclass
class SandboxServer:
    """The simulator on its own loopback listener, for ``serve --environment sandbox``."""

    runner: web.AppRunner
    url: str

    @classmethod
    async def start(cls, host: str, port: int, token_lifetime: int) -> SandboxServer:
        from gateway.sandbox import SandboxConfig, build_sandbox_app  # noqa: PLC0415 - optional

        runner = web.AppRunner(
            build_sandbox_app(SandboxConfig(token_lifetime_s=token_lifetime)), access_log=None
        )
        await runner.setup()
        sock = listen(host, port)
        await web.SockSite(runner, sock).start()
        bound_host, bound_port = sock.getsockname()[:2]
        return cls(runner, f"http://{bound_host}:{bound_port}")

    async def stop(self) -> None:
        await self.runner.cleanup()


def with_sandbox_defaults(settings: Settings, api_url: str | None = None) -> Settings:
    """Fill in the sandbox's demo credentials and scopes where none were configured."""
    from gateway.sandbox import ALL_SCOPES, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET  # noqa: PLC0415

    update: dict[str, object] = {}
    if api_url is not None:
        update["api_url"] = api_url
    if settings.client_id is None:
        update["client_id"] = DEMO_CLIENT_ID
    if settings.client_secret is None and settings.client_secret_file is None:
        from pydantic import SecretStr  # noqa: PLC0415

        update["client_secret"] = SecretStr(DEMO_CLIENT_SECRET)
    if not settings.scopes:
        update["scopes"] = ALL_SCOPES
    return settings.model_copy(update=update)


@contextlib.asynccontextmanager
async def sandbox_for(settings: Settings) -> AsyncIterator[Settings]:
    """Yield settings ready to use, with an in-process sandbox running if they ask for one."""
    if settings.environment is not Environment.SANDBOX:
        yield settings
        return
    if not settings.uses_inprocess_sandbox:
        yield with_sandbox_defaults(settings)
        return
    sandbox = await SandboxServer.start("127.0.0.1", 0, settings.sandbox_token_lifetime_seconds)
    log.warning(
        "SANDBOX MODE: every answer comes from the built-in EXACT simulator; the data is"
        " simulated and no real practice is contacted",
        extra={"fields": {"event": "sandbox", "sandbox_url": sandbox.url}},
    )
    try:
        yield with_sandbox_defaults(settings, sandbox.url)
    finally:
        await sandbox.stop()


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


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain and return."""
    async with sandbox_for(settings) as effective:
        gateway = Gateway(effective)
        await gateway.start()
        await until_signalled()
        await gateway.shutdown()


async def run_sandbox(settings: SandboxServerSettings) -> None:
    """``exact-gateway sandbox``: the simulator alone, until SIGTERM or SIGINT."""
    sandbox = await SandboxServer.start(
        settings.host, settings.port, settings.token_lifetime_seconds
    )
    log.warning(
        "EXACT sandbox listening: simulated data, demo client id and secret in the README",
        extra={"fields": {"event": "sandbox", "sandbox_url": sandbox.url}},
    )
    await until_signalled()
    await sandbox.stop()
