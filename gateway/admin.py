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
from gateway.pauses import MAX_ENTRY_BYTES, PauseEntry, PauseFileError
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


class PauseEditor(Protocol):
    @property
    def available(self) -> bool: ...

    async def set(self, practice_id: str, body: bytes) -> PauseEntry | None: ...

    async def remove(self, practice_id: str) -> bool: ...


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
# The fleet's pauses (gateway.fleet.fleet_pauses.FleetPauses), when Redis is on.
PAUSE_EDITOR: web.AppKey[PauseEditor] = web.AppKey("pause_editor")


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


def _problem(status: int, reason: str, title: str, detail: str) -> web.Response:
    return web.json_response(
        {
            "type": f"urn:exact-gateway:error:{reason}",
            "title": title,
            "status": status,
            "detail": detail,
            "reason": reason,
        },
        status=status,
        content_type="application/problem+json",
        headers={"Cache-Control": "no-store"},
    )


_FLEET_PAUSES_OFF = (
    409,
    "fleet_pauses_off",
    "Fleet pauses need Redis",
    "REDIS_URL is not set: pause a practice in PRACTICE_PAUSES_FILE instead",
)
_REDIS_UNAVAILABLE = (
    503,
    "redis_unavailable",
    "Redis did not take the change",
    "the fleet's Redis is down or slow; nothing was changed, try again",
)


async def _editor(request: web.Request) -> PauseEditor | web.Response:
    editor = request.app.get(PAUSE_EDITOR)
    if editor is None:
        return _problem(*_FLEET_PAUSES_OFF)
    if not editor.available:
        return _problem(*_REDIS_UNAVAILABLE)
    return editor


async def _entry_body(request: web.Request) -> bytes | None:
    """A pause's whole body, or None when it is larger than a pause can be. (``read(n)``
    returns what has arrived, not n bytes: a body split across segments is read to its end
    before it is parsed.)"""
    if request.content_length is not None and request.content_length > MAX_ENTRY_BYTES:
        return None
    body = bytearray()
    while len(body) <= MAX_ENTRY_BYTES and (
        chunk := await request.content.read(MAX_ENTRY_BYTES + 1 - len(body))
    ):
        body += chunk
    return bytes(body) if len(body) <= MAX_ENTRY_BYTES else None


async def pause_put(request: web.Request) -> web.Response:
    """Pause a practice on every replica: ``{"pause_until": RFC 3339, "note": text}``."""
    editor = await _editor(request)
    if isinstance(editor, web.Response):
        return editor
    if request.content_type != "application/json":
        return _problem(415, "pause_invalid", "Not a pause", "send the pause as application/json")
    body = await _entry_body(request)
    if body is None:
        return _problem(
            413, "pause_invalid", "Not a pause", f"a pause is at most {MAX_ENTRY_BYTES} bytes"
        )
    try:
        entry = await editor.set(request.match_info["practice_id"], body)
    except PauseFileError as exc:
        return _problem(400, "pause_invalid", "Not a pause", str(exc))
    if entry is None:
        return _problem(*_REDIS_UNAVAILABLE)
    return web.json_response(
        {"practice_id": entry.practice_id.upper(), "until_unix": entry.until, "note": entry.note},
        headers={"Cache-Control": "no-store"},
    )


async def pause_delete(request: web.Request) -> web.Response:
    """Lift the fleet's pause for a practice (a pause in the file stays)."""
    editor = await _editor(request)
    if isinstance(editor, web.Response):
        return editor
    try:
        done = await editor.remove(request.match_info["practice_id"])
    except PauseFileError as exc:
        return _problem(400, "pause_invalid", "Not a pause", str(exc))
    if not done:
        return _problem(*_REDIS_UNAVAILABLE)
    return web.Response(status=204, headers={"Cache-Control": "no-store"})


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
    pause_editor: PauseEditor | None = None,
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
    if pause_editor is not None:
        app[PAUSE_EDITOR] = pause_editor
    app.router.add_get("/", status_page)
    app.router.add_get("/status", status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/token", token)
    app.router.add_get("/breakers", breakers)
    app.router.add_get("/practices", practices_list)
    app.router.add_get("/practices/{practice_id}", practice)
    app.router.add_put("/pauses/{practice_id}", pause_put)
    app.router.add_delete("/pauses/{practice_id}", pause_delete)
    return app
