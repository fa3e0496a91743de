"""The admin port: health, readiness, metrics, token and breaker status, the availability
ledger of practices, and a status page (:mod:`gateway.status_page`, fed by
:mod:`gateway.history` and the ledger).

It listens separately from the proxy so Prometheus and kubelet never compete with callers, and
it keeps answering during a drain (readiness says ``draining``) until the process exits.
Nothing here returns a token or a secret, and only probes and metrics answer strangers (the
rule is :mod:`gateway.admin_access`, applied to every request by one middleware).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import __version__
from gateway.admin_access import AdminAccess
from gateway.exact_api import PRACTICE_ID
from gateway.history import History
from gateway.metrics import Metrics
from gateway.practices.watch import PracticeWatch
from gateway.resilience import Resilience
from gateway.status_page import CONTENT_SECURITY_POLICY, PAGE, status_document
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
HISTORY: web.AppKey[History] = web.AppKey("history", History)
LIFECYCLE: web.AppKey[Lifecycle] = web.AppKey("lifecycle", Lifecycle)
ACCESS: web.AppKey[AdminAccess] = web.AppKey("access", AdminAccess)
PRACTICES: web.AppKey[PracticeWatch] = web.AppKey("practices", PracticeWatch)
# The fleet's part of /status (gateway.fleet.member.FleetMember.status), when it is on.
FleetStatus = Callable[[], dict[str, Any]]
FLEET: web.AppKey[FleetStatus] = web.AppKey("fleet")


@web.middleware
async def access_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse foreign Host names (421) and introspection from outside the allowed networks
    (403) before any handler runs, as RFC 9457 problem documents."""
    refusal = request.app[ACCESS].decide(request.remote, request.headers.get("Host"), request.path)
    if refusal is None:
        return await handler(request)
    return web.json_response(
        {
            "type": f"urn:exact-gateway:error:{refusal.reason}",
            "title": refusal.title,
            "status": refusal.status,
            "detail": refusal.detail,
            "reason": refusal.reason,
        },
        status=refusal.status,
        content_type="application/problem+json",
        headers={"Cache-Control": "no-store"},
    )


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
    return web.json_response(
        request.app[RESILIENCE].breaker_status() | {"paused": request.app[PRACTICES].paused_now()}
    )


async def practices_list(request: web.Request) -> web.Response:
    """The availability ledger: every practice held (JSON), or one row each (CSV)."""
    ledger = request.app[PRACTICES].ledger
    if request.query.get("format") == "csv":
        return web.Response(
            text=ledger.to_csv(),
            content_type="text/csv",
            charset="utf-8",
            headers={
                "Content-Disposition": 'attachment; filename="practices.csv"',
                "Cache-Control": "no-store",
            },
        )
    return web.json_response(ledger.snapshot(), headers={"Cache-Control": "no-store"})


async def practice(request: web.Request) -> web.Response:
    """One practice of the ledger, with its 24 hourly buckets; 404 when it is not held."""
    practice_id = request.match_info["practice_id"]
    entry = None
    if PRACTICE_ID.fullmatch(practice_id):
        entry = request.app[PRACTICES].ledger.get(practice_id)
    if entry is None:
        return web.json_response(
            {
                "type": "urn:exact-gateway:error:practice_not_known",
                "title": "No such practice in the ledger",
                "status": 404,
                "detail": "the ledger holds subscribed and recently seen practices only",
                "reason": "practice_not_known",
            },
            status=404,
            content_type="application/problem+json",
            headers={"Cache-Control": "no-store"},
        )
    return web.json_response(entry, headers={"Cache-Control": "no-store"})


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
            history=request.app[HISTORY].snapshot(),
            inflight=lifecycle.inflight,
            troubled=request.app[PRACTICES].troubled(),
        )
        # The Redis link's state and this replica's share: null when the fleet is off.
        | {"fleet": request.app[FLEET]() if FLEET in request.app else None},
        headers={"Cache-Control": "no-store"},
    )


def build_admin_app(
    metrics_: Metrics,
    tokens: TokenSource,
    resilience: Resilience,
    history: History,
    lifecycle: Lifecycle,
    *,
    practices: PracticeWatch,
    fleet: FleetStatus | None = None,
    access: AdminAccess | None = None,
) -> web.Application:
    app = web.Application(middlewares=[access_guard])
    app[ACCESS] = access if access is not None else AdminAccess()
    app[METRICS] = metrics_
    app[TOKENS] = tokens
    app[RESILIENCE] = resilience
    app[HISTORY] = history
    app[LIFECYCLE] = lifecycle
    app[PRACTICES] = practices
    if fleet is not None:
        app[FLEET] = fleet
    app.router.add_get("/", status_page)
    app.router.add_get("/status", status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/token", token)
    app.router.add_get("/breakers", breakers)
    app.router.add_get("/practices", practices_list)
    app.router.add_get("/practices/{practice_id}", practice)
    return app
