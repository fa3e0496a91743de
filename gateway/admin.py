"""The admin port: health, readiness, metrics, token and breaker status, and a status page.

It listens separately from the proxy so Prometheus and kubelet never compete with callers, and
it keeps answering during a drain (readiness says ``draining``) until the process exits.
Nothing here returns a token or a secret.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import __version__
from gateway.metrics import Metrics
from gateway.resilience import Resilience
from gateway.status import CONTENT_SECURITY_POLICY, PAGE, RecentRates, status_document
from gateway.tokens import TokenSource


class Lifecycle(Protocol):
    @property
    def draining(self) -> bool: ...

    @property
    def environment(self) -> str: ...

    @property
    def inflight(self) -> int: ...

    @property
    def ready_requires_usable_token(self) -> bool: ...


METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
TOKENS: web.AppKey[TokenSource] = web.AppKey("tokens", TokenSource)
RESILIENCE: web.AppKey[Resilience] = web.AppKey("resilience", Resilience)
RATES: web.AppKey[RecentRates] = web.AppKey("rates", RecentRates)
LIFECYCLE: web.AppKey[Lifecycle] = web.AppKey("lifecycle", Lifecycle)


async def healthz(request: web.Request) -> web.Response:
    """Answering at all proves the process and its event loop are alive."""
    return web.json_response({"status": "ok"})


def not_ready_reason(lifecycle: Lifecycle, tokens: TokenSource) -> str | None:
    """Why the gateway should not get traffic now, or None when it should.

    Ready once a first token has been obtained since start and not draining. An identity
    server outage after that does not take the replica out of its Service: callers then get
    503 ``token_unavailable`` with ``Retry-After`` from the gateway, which they can act on,
    instead of connection errors from a Service with no endpoints (every replica would flip
    together). ``READY_REQUIRES_USABLE_TOKEN`` restores the stricter rule.
    """
    if lifecycle.draining:
        return "draining"
    if tokens.has_usable_token():
        return None
    if tokens.ready_event.is_set() and not lifecycle.ready_requires_usable_token:
        return None
    return f"no usable access token: {tokens.last_error or 'not fetched yet'}"


async def readyz(request: web.Request) -> web.Response:
    reason = not_ready_reason(request.app[LIFECYCLE], request.app[TOKENS])
    if reason is not None:
        return web.json_response({"ready": False, "reason": reason}, status=503)
    return web.json_response({"ready": True})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def token(request: web.Request) -> web.Response:
    return web.json_response(request.app[TOKENS].status())


async def breakers(request: web.Request) -> web.Response:
    """Every practice breaker that is not closed, the partner-wide one, and counts."""
    return web.json_response(request.app[RESILIENCE].breaker_status())


async def status_page(request: web.Request) -> web.Response:
    """A page for people: it polls /status and needs nothing from outside this port."""
    return web.Response(
        body=PAGE,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


async def status(request: web.Request) -> web.Response:
    lifecycle, tokens = request.app[LIFECYCLE], request.app[TOKENS]
    return web.json_response(
        status_document(
            version=__version__,
            environment=lifecycle.environment,
            ready=not_ready_reason(lifecycle, tokens) is None,
            draining=lifecycle.draining,
            token=tokens.status(),
            breakers=request.app[RESILIENCE].breaker_status(),
            rates=request.app[RATES].summary(),
            inflight=lifecycle.inflight,
        ),
        headers={"Cache-Control": "no-store"},
    )


def build_admin_app(
    metrics_: Metrics,
    tokens: TokenSource,
    resilience: Resilience,
    rates: RecentRates,
    lifecycle: Lifecycle,
) -> web.Application:
    app = web.Application()
    app[METRICS] = metrics_
    app[TOKENS] = tokens
    app[RESILIENCE] = resilience
    app[RATES] = rates
    app[LIFECYCLE] = lifecycle
    app.router.add_get("/", status_page)
    app.router.add_get("/status", status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/token", token)
    app.router.add_get("/breakers", breakers)
    return app
