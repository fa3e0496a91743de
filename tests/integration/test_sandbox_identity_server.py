"""The sandbox's identity server over real sockets: discovery, tokens, errors and modes."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gateway.sandbox import (
    ALL_SCOPES,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    LIMITED_CLIENT_ID,
    LIMITED_CLIENT_SECRET,
    SANDBOX_STATE,
    SandboxConfig,
    build_sandbox_app,
)
from tests.fakes import FakeClock

Client = TestClient[web.Request, web.Application]
DETAILS = "/v1/Practices/UKTEST1/details"


SANDBOX_EPOCH = 1_714_550_400.0  # the sandbox's data epoch (2024-05-01)


def basic(client_id: str = DEMO_CLIENT_ID, secret: str = DEMO_CLIENT_SECRET) -> dict[str, str]:
    """An HTTP Basic header for the token endpoint."""
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.fixture
def clock() -> FakeClock:
    """The sandbox's injected wall clock."""
    return FakeClock(SANDBOX_EPOCH)


@pytest.fixture
async def sandbox(aiohttp_client: AiohttpClient, clock: FakeClock) -> Client:
    """A sandbox with a fake clock and short latencies, behind a real socket."""
    config = SandboxConfig(slow_latency_s=0.05, clock=clock, signing_key=b"s" * 32)
    return await aiohttp_client(build_sandbox_app(config))


async def request_token(
    sandbox: Client, form: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """POST the token endpoint; return status and JSON body."""
    body = {"grant_type": "client_credentials"} if form is None else form
    response = await sandbox.post(
        "/connect/token", data=body, headers=basic() if headers is None else headers
    )
    return response.status, await response.json()


async def details_status(sandbox: Client, token: str) -> tuple[int, str]:
    """Call an API endpoint with `token`; return status and WWW-Authenticate."""
    response = await sandbox.get(DETAILS, headers={"Authorization": f"Bearer {token}"})
    return response.status, response.headers.get("WWW-Authenticate", "")


async def test_discovery_points_at_this_server(sandbox: Client) -> None:
    """The issuer is the caller's own origin and the token endpoint hangs off it."""
    response = await sandbox.get("/.well-known/openid-configuration")
    assert response.status == 200
    document = await response.json()
    origin = str(sandbox.make_url("")).rstrip("/")
    assert document["issuer"] == origin
    assert document["token_endpoint"] == origin + "/connect/token"
    assert document["grant_types_supported"] == ["client_credentials"]
    assert document["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
    ]
    assert document["scopes_supported"] == list(ALL_SCOPES)
    jwks = await sandbox.get(document["jwks_uri"].removeprefix(origin))
    assert await jwks.json() == {"keys": []}


async def test_token_by_basic_auth(sandbox: Client, clock: FakeClock) -> None:
    """Basic credentials earn a bearer JWT with every allowed scope, not cacheable."""
    response = await sandbox.post(
        "/connect/token", data={"grant_type": "client_credentials"}, headers=basic()
    )
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"].split() == list(ALL_SCOPES)
    assert body["access_token"].count(".") == 2
    assert (await details_status(sandbox, body["access_token"]))[0] == 200


async def test_token_by_form_credentials_with_scopes(sandbox: Client) -> None:
    """client_secret_post works, and only the requested scopes are granted."""
    status, body = await request_token(
        sandbox,
        {
            "grant_type": "client_credentials",
            "client_id": DEMO_CLIENT_ID,
            "client_secret": DEMO_CLIENT_SECRET,
            "scope": "practice.get appointment.list",
        },
        headers={},
    )
    assert status == 200
    assert body["scope"] == "practice.get appointment.list"


@pytest.mark.parametrize(
    ("form", "headers", "error"),
    [
        ({"grant_type": "client_credentials"}, basic(secret="wrong"), "invalid_client"),
        ({"grant_type": "client_credentials"}, basic("nobody", "x"), "invalid_client"),
        ({"grant_type": "client_credentials"}, {}, "invalid_client"),
        (
            {"grant_type": "client_credentials", "scope": "appointment.list"},
            basic(LIMITED_CLIENT_ID, LIMITED_CLIENT_SECRET),
            "invalid_scope",
        ),
        ({"grant_type": "client_credentials", "scope": "openid"}, basic(), "invalid_scope"),
        ({"grant_type": "authorization_code", "code": "x"}, basic(), "unsupported_grant_type"),
        ({"scope": "practice.get"}, basic(), "invalid_request"),
    ],
)
async def test_token_errors_are_oauth2_json(
    sandbox: Client, form: dict[str, str], headers: dict[str, str], error: str
) -> None:
    """Each refusal is HTTP 400 with the OAuth2 error code, as IdentityServer answers."""
    status, body = await request_token(sandbox, form, headers)
    assert status == 400
    assert body["error"] == error
    assert body["error_description"]


async def test_json_body_is_invalid_request(sandbox: Client) -> None:
    """The token endpoint only takes form bodies."""
    response = await sandbox.post(
        "/connect/token", json={"grant_type": "client_credentials"}, headers=basic()
    )
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"


async def test_token_requests_are_counted_by_outcome(sandbox: Client) -> None:
    """GET /_sandbox/identity reports totals and outcomes."""
    await request_token(sandbox)
    await request_token(sandbox)
    await request_token(sandbox, headers=basic(secret="wrong"))
    identity = await (await sandbox.get("/_sandbox/identity")).json()
    assert identity["token_requests"] == {
        "total": 3,
        "by_outcome": {"invalid_client": 1, "issued": 2},
    }


async def test_expired_token_is_401_invalid_token(sandbox: Client, clock: FakeClock) -> None:
    """Once the fake clock passes exp, the API answers 401 with invalid_token."""
    _, body = await request_token(sandbox)
    token = body["access_token"]
    clock.now += 3599
    assert (await details_status(sandbox, token))[0] == 200
    clock.now += 1
    status, challenge = await details_status(sandbox, token)
    assert status == 401
    assert challenge.startswith('Bearer error="invalid_token"')
    assert "expired" in challenge


async def test_short_lifetime_override(sandbox: Client, clock: FakeClock) -> None:
    """A 5 s lifetime set on the identity server shows in expires_in and in expiry."""
    response = await sandbox.put("/_sandbox/identity", json={"token_lifetime_s": 5})
    assert (await response.json())["token_lifetime_s"] == 5
    _, body = await request_token(sandbox)
    assert body["expires_in"] == 5
    clock.now += 5
    assert (await details_status(sandbox, body["access_token"]))[0] == 401
    await sandbox.put("/_sandbox/identity", json={"token_lifetime_s": None})
    assert (await request_token(sandbox))[1]["expires_in"] == 3600


async def test_revoke_invalidates_earlier_tokens_only(sandbox: Client) -> None:
    """After revoke, old tokens get 401 and a new token works."""
    _, old = await request_token(sandbox)
    response = await sandbox.post("/_sandbox/identity/revoke")
    assert response.status == 200
    status, challenge = await details_status(sandbox, old["access_token"])
    assert status == 401
    assert "revoked" in challenge
    _, new = await request_token(sandbox)
    assert (await details_status(sandbox, new["access_token"]))[0] == 200


async def test_refusing_mode(sandbox: Client) -> None:
    """In refusing mode even the right credentials get invalid_client."""
    await sandbox.put("/_sandbox/identity", json={"mode": "refusing"})
    status, body = await request_token(sandbox)
    assert (status, body["error"]) == (400, "invalid_client")


@pytest.mark.parametrize("failure_status", [500, 503])
async def test_failing_mode(sandbox: Client, failure_status: int) -> None:
    """In failing mode the token endpoint answers the configured server error."""
    await sandbox.put(
        "/_sandbox/identity", json={"mode": "failing", "failure_status": failure_status}
    )
    status, body = await request_token(sandbox)
    assert (status, body["error"]) == (failure_status, "server_error")
    await sandbox.put("/_sandbox/identity", json={"mode": "normal"})
    assert (await request_token(sandbox))[0] == 200


async def test_slow_mode_delays_answers(sandbox: Client) -> None:
    """In slow mode a token takes at least latency_s, then arrives normally."""
    await sandbox.put("/_sandbox/identity", json={"mode": "slow", "latency_s": 0.1})
    started = time.monotonic()
    status, _ = await request_token(sandbox)
    assert status == 200
    assert time.monotonic() - started >= 0.1


async def test_identity_control_rejects_bad_input(sandbox: Client) -> None:
    """Invalid identity settings are 400 with a message, and change nothing."""
    response = await sandbox.put("/_sandbox/identity", json={"mode": "asleep"})
    assert response.status == 400
    assert "mode" in (await response.json())["error"]
    response = await sandbox.put("/_sandbox/identity", data=b"{not json")
    assert response.status == 400
    assert sandbox.app[SANDBOX_STATE].identity.mode == "normal"
