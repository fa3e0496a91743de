"""HTTP face of the simulated identity server: OIDC discovery and `/connect/token`.

The issuer is whatever scheme and host the caller used, so the same sandbox works on any port
and behind any local name. Tokens are HS256, so the JWKS is empty; nothing outside the
sandbox needs to verify them.

The run-time modes (`/_sandbox/identity`) apply to the token endpoint only, so that token
failures can be tested without also breaking discovery: `slow` waits `latency_s` before
answering, `failing` answers `failure_status` (503 by default) with `server_error`, and
`refusing` answers `invalid_client` to everyone.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.sandbox.client_auth import (
    ClientGrant,
    OAuthError,
    authenticate_client,
    grant_client_credentials,
)
from gateway.sandbox.clients import ALL_SCOPES
from gateway.sandbox.state import SANDBOX_STATE, SandboxState

TOKEN_PATH = "/connect/token"  # noqa: S105 - a URL path, not a password
JWKS_PATH = "/.well-known/openid-configuration/jwks"
_FORM = "application/x-www-form-urlencoded"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _issuer(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def discovery(request: web.Request) -> web.Response:
    """OIDC discovery document, pointing at this sandbox's own endpoints."""
    issuer = _issuer(request)
    return web.json_response(
        {
            "issuer": issuer,
            "jwks_uri": issuer + JWKS_PATH,
            "token_endpoint": issuer + TOKEN_PATH,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": list(ALL_SCOPES),
            "claims_supported": ["sub", "client_id", "scope", "iat", "exp", "jti"],
            "id_token_signing_alg_values_supported": ["HS256"],
        }
    )


async def jwks(_request: web.Request) -> web.Response:
    """An empty key set: HS256 tokens are verified with the sandbox's secret key only."""
    return web.json_response({"keys": []})


def _oauth_error(error: OAuthError) -> web.Response:
    return web.json_response(
        {"error": error.error, "error_description": error.description},
        status=error.status,
        headers=_NO_STORE,
    )


async def token(request: web.Request) -> web.Response:
    """The client-credentials token endpoint."""
    state = request.app[SANDBOX_STATE]
    control = state.identity
    if control.mode == "slow" and control.latency_s > 0:
        await asyncio.sleep(control.latency_s)
    if control.mode == "failing":
        control.record("server_error")
        return _oauth_error(
            OAuthError("server_error", "The identity server is unavailable", control.failure_status)
        )
    try:
        grant = await _grant(request, state)
    except OAuthError as error:
        control.record(error.error)
        return _oauth_error(error)
    lifetime = state.token_lifetime_s
    access_token = state.tokens.issue(
        issuer=_issuer(request), client_id=grant.client_id, scopes=grant.scopes, lifetime_s=lifetime
    )
    control.record("issued")
    return web.json_response(
        {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": " ".join(grant.scopes),
        },
        headers=_NO_STORE,
    )


async def _grant(request: web.Request, state: SandboxState) -> ClientGrant:
    """Authenticate the client and apply the grant; raise `OAuthError` on any refusal."""
    is_form = request.content_type == _FORM
    form = await request.post() if is_form else None
    fields = {key: [str(v) for v in form.getall(key)] for key in set(form)} if form else {}
    if state.identity.mode == "refusing":
        raise OAuthError("invalid_client", "Unknown client or invalid client secret")
    client = authenticate_client(state.clients, request.headers.get("Authorization"), fields)
    if not is_form:
        raise OAuthError("invalid_request", "The body must be application/x-www-form-urlencoded")
    return grant_client_credentials(client, fields)


def add_identity_routes(app: web.Application) -> None:
    """Register the identity server's endpoints on `app`."""
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get(JWKS_PATH, jwks)
    app.router.add_post(TOKEN_PATH, token)
