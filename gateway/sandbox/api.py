"""The simulated EXACT API (`/v1/...`): the checks the cloud relay makes, the relay to the
practice's on-premises server, and the endpoints themselves.

Checks run in this order, each answering with a plain-text body (the swagger types every
error as `string`):

1. bearer token: missing, malformed, badly signed, expired or revoked → 401 with
   `WWW-Authenticate: Bearer` (plus `error="invalid_token"` when a token was sent);
2. `x-api-version`: absent is taken as 1.0 (assumption: ASP.NET API versioning with a
   default version); anything but `1.0`/`1` → 400. Every answer carries
   `api-supported-versions: 1.0`;
3. the endpoint's scope → 403;
4. the practice exists and is subscribed → 403 (assumption: the API does not reveal which);
   a request for a known practice refused by steps 1-4 is logged with `relayed: false`
   (and counted as `refused`), so a test can prove it never reached the practice;
5. the relay to the practice, according to its behaviour (see `practices`), then its EXACT
   version against the route's minimum (`gateway.exact_api`): this is an *attempt*,
   counted and logged with `relayed: true` whatever the outcome;
6. the endpoint: 400 for malformed ids, dates or bodies, 404 for unknown records, 409 for
   conflicting updates.

A path that is no route at all is 404 before any check, like an ASP.NET app with no
matching endpoint; a known path with another method is 405 with `Allow`. Further
assumptions where docs/exact-facts.md is silent:

* practices on an EXACT older than 13.842 answer every call with 400; PATCH needs 13.856
  and answers 400 below it, saying so; the relay learns the version from the practice's
  server, so an offline old practice is 503 and a version refusal is an attempt;
* PATCH and POST Contact bodies must be `application/json` (415 otherwise, as ASP.NET does);
* the appointment list needs `from` and `to`, keeps appointments with from <= start < to,
  accepts `status` repeated (any of them), takes an empty `status` or id filter as no
  filter (ASP.NET binds an empty value to null for a nullable parameter, and the only
  public client always sends `status=`), and is the only list cut into pages; the
  patient, payor and practitioner lists come whole;
* ContactDetails needs `patient.get`; `emailAddresses` and `phoneNumbers` are each left out
  unless the token holds the matching `patient.get.contactdetails.*` scope.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from aiohttp import web

from gateway.exact_api import API_MINIMUM_VERSION, SUBSCRIPTIONS, Route
from gateway.sandbox.endpoints import (
    API_ROUTES,
    ENDPOINT_HANDLERS,
    ApiError,
    Call,
    Handler,
    json_answer,
)
from gateway.sandbox.practices import Practice
from gateway.sandbox.routing import Router, WrongMethod
from gateway.sandbox.state import SANDBOX_STATE, SandboxState
from gateway.sandbox.token_issuer import IssuedToken, TokenError

logger = logging.getLogger(__name__)

SUPPORTED_API_VERSIONS = ("1.0", "1")
# How a version refusal names the operation (only PATCH has a minimum above the baseline).
_DOING = {"UpdateAppointment": "Updating appointments"}
_ROUTER = Router(API_ROUTES)


def _authenticate(request: web.Request, state: SandboxState) -> IssuedToken:
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw:
        raise ApiError(
            401, "Unauthorized: a bearer token is required", {"WWW-Authenticate": "Bearer"}
        )
    try:
        return state.tokens.verify(raw)
    except TokenError as exc:
        challenge = f'Bearer error="invalid_token", error_description="{exc}"'
        raise ApiError(401, f"Unauthorized: {exc}", {"WWW-Authenticate": challenge}) from exc


def _check_version(value: str | None) -> None:
    if value is not None and value.strip() not in SUPPORTED_API_VERSIONS:
        raise ApiError(
            400,
            f"The API version '{value}' is not supported. Supported versions: 1.0",
        )


def _accessible_practice(state: SandboxState, practice_id: str) -> Practice:
    practice = state.practices.get(practice_id.upper())
    if practice is None or not practice.subscribed:
        raise ApiError(
            403,
            f"Practice '{practice_id}' is not accessible: it is unknown or has not subscribed "
            "to this application",
        )
    return practice


async def handle_api(request: web.Request) -> web.StreamResponse:
    """Entry point for every request that is not a sandbox or identity path."""
    path = request.rel_url.raw_path
    found = _ROUTER.match(request.method, path)
    if found is None:
        return ApiError(404, "Not Found").response()
    if isinstance(found, WrongMethod):
        return ApiError(405, "Method Not Allowed", {"Allow": ", ".join(found.allowed)}).response()
    state = request.app[SANDBOX_STATE]
    api_version = request.headers.get("x-api-version")
    route = found.route
    try:
        token = _admit(request, state, route, api_version)
        if route is SUBSCRIPTIONS:
            return json_answer([p.practice_id for p in state.practices.values() if p.subscribed])
        practice = _accessible_practice(state, found.params["practiceId"])
    except ApiError as error:
        if route.for_practice:
            # Refused by the relay before the practice: logged so a test can see it never
            # arrived. Unknown ids are not logged anywhere (nothing to grow without bound).
            known = state.practices.get(found.params["practiceId"].upper())
            if known is not None:
                _log(known, request, state, error.status, api_version, relayed=False)
        return error.response()
    call = Call(request, state, token, practice, found.params, route)
    return await _relay(call, ENDPOINT_HANDLERS[route.name], api_version)


def _log(
    practice: Practice,
    request: web.Request,
    state: SandboxState,
    status: int | None,
    api_version: str | None,
    *,
    relayed: bool,
    at: float | None = None,
) -> None:
    """One entry of the practice's request log; `relayed` says whether it reached it."""
    wall = datetime.fromtimestamp(state.config.clock(), UTC)
    if relayed:
        practice.attempts += 1
    else:
        practice.refused += 1
    practice.log.append(
        {
            "method": request.method,
            "path": request.rel_url.raw_path,
            "query": request.rel_url.raw_query_string,
            "at": state.config.monotonic() if at is None else at,
            "time": wall.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "status": status,
            "relayed": relayed,
            "api_version": api_version,
        }
    )


def _admit(
    request: web.Request, state: SandboxState, route: Route, api_version: str | None
) -> IssuedToken:
    """Steps 1-3: token, API version, scope."""
    token = _authenticate(request, state)
    _check_version(api_version)
    if route.scope not in token.scopes:
        raise ApiError(403, f"The access token lacks the scope '{route.scope}'")
    return token


async def _relay(call: Call, handler: Handler, api_version: str | None) -> web.Response:
    at = call.state.config.monotonic()
    status: int | None = None  # stays None if the caller goes away mid-request
    practice = call.practice
    practice.inflight += 1
    practice.peak_inflight = max(practice.peak_inflight, practice.inflight)
    try:
        response = await _at_practice(call, handler)
        status = response.status
        return response
    finally:
        practice.inflight -= 1
        _log(call.practice, call.request, call.state, status, api_version, relayed=True, at=at)


async def _at_practice(call: Call, handler: Handler) -> web.Response:
    """What the relay answers, given how the practice's server behaves."""
    try:
        await _reach_practice(call)
        response = await handler(call)
    except ApiError as error:
        return error.response()
    except Exception:
        # Any bug becomes the API's documented 500, and is logged with its traceback.
        logger.exception("sandbox endpoint failed")
        return ApiError(500, "Server Error").response()
    if call.practice.behaviour == "late":
        # The practice did the work; its answer came after the relay's time-out.
        practice_id = call.practice.practice_id
        return ApiError(
            504, f"The server of practice '{practice_id}' did not answer in time"
        ).response()
    return response


async def _reach_practice(call: Call) -> None:
    """Wait as long as the practice takes; raise the relay's error if it cannot answer."""
    practice = call.practice
    behaviour = practice.behaviour
    # Offline (and a flaky miss) is known at once: the relay has no connection to use.
    if behaviour == "offline" or (
        behaviour == "flaky" and call.state.flaky_rng.random() < practice.failure_rate
    ):
        raise ApiError(
            503, f"Unable to communicate with the server of practice '{practice.practice_id}'"
        )
    if practice.latency_s > 0:
        await asyncio.sleep(practice.latency_s)
    if behaviour == "erroring":
        raise ApiError(
            502, f"The server of practice '{practice.practice_id}' failed to handle the request"
        )
    if behaviour == "timeout":
        raise ApiError(
            504, f"The server of practice '{practice.practice_id}' did not answer in time"
        )
    version = practice.version
    if version is None:  # never: the control endpoint only accepts dotted versions
        return
    if version < API_MINIMUM_VERSION:
        raise ApiError(
            400,
            f"The EXACT API requires EXACT {API_MINIMUM_VERSION} or later; the practice "
            f"runs {practice.pms_version}",
        )
    minimum = call.route.minimum_version
    if minimum is not None and version < minimum:
        raise ApiError(
            400,
            f"{_DOING.get(call.route.name, call.route.name)} requires EXACT {minimum} or "
            f"later; the practice runs {practice.pms_version}",
        )
