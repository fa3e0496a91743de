"""Client authentication and the client-credentials grant, without HTTP."""

from __future__ import annotations

import base64

import pytest

from gateway.sandbox.client_auth import (
    IdentityControl,
    OAuthError,
    authenticate_client,
    grant_client_credentials,
)
from gateway.sandbox.clients import (
    ALL_SCOPES,
    BUILTIN_CLIENTS,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    LIMITED_CLIENT_ID,
)

CLIENTS = {c.client_id: c for c in BUILTIN_CLIENTS}


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def test_basic_wins_over_form_credentials() -> None:
    """With both present, the Basic header decides who the client is."""
    form = {"client_id": [LIMITED_CLIENT_ID], "client_secret": ["wrong"]}
    client = authenticate_client(CLIENTS, _basic(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET), form)
    assert client.client_id == DEMO_CLIENT_ID


def test_form_credentials_work_alone() -> None:
    """client_secret_post is accepted."""
    form = {"client_id": [DEMO_CLIENT_ID], "client_secret": [DEMO_CLIENT_SECRET]}
    assert authenticate_client(CLIENTS, None, form).client_id == DEMO_CLIENT_ID


@pytest.mark.parametrize(
    "authorization",
    [
        _basic(DEMO_CLIENT_ID, "nope"),
        _basic("stranger", DEMO_CLIENT_SECRET),
        "Basic !!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        None,
    ],
)
def test_bad_credentials_are_invalid_client(authorization: str | None) -> None:
    """Wrong secret, unknown client, malformed header or nothing: invalid_client."""
    with pytest.raises(OAuthError) as caught:
        authenticate_client(CLIENTS, authorization, {})
    assert caught.value.error == "invalid_client"
    assert caught.value.status == 400


def test_no_scope_grants_every_allowed_scope() -> None:
    """Without `scope`, the token gets all the client's scopes."""
    grant = grant_client_credentials(
        CLIENTS[DEMO_CLIENT_ID], {"grant_type": ["client_credentials"]}
    )
    assert grant.scopes == ALL_SCOPES


def test_requested_scopes_are_kept_in_order_without_repeats() -> None:
    """The grant holds what was asked for."""
    form = {
        "grant_type": ["client_credentials"],
        "scope": ["practice.get appointment.list practice.get"],
    }
    grant = grant_client_credentials(CLIENTS[DEMO_CLIENT_ID], form)
    assert grant.scopes == ("practice.get", "appointment.list")


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({}, "invalid_request"),
        ({"grant_type": ["client_credentials", "client_credentials"]}, "invalid_request"),
        ({"grant_type": ["password"]}, "unsupported_grant_type"),
        ({"grant_type": ["client_credentials"], "scope": ["appointment.list"]}, "invalid_scope"),
    ],
)
def test_grant_errors(form: dict[str, list[str]], error: str) -> None:
    """Missing or repeated grant_type, other grants and foreign scopes are refused."""
    with pytest.raises(OAuthError) as caught:
        grant_client_credentials(CLIENTS[LIMITED_CLIENT_ID], form)
    assert caught.value.error == error


def test_identity_control_validates_before_changing() -> None:
    """A bad control request leaves every setting as it was."""
    control = IdentityControl(default_latency_s=0.5)
    with pytest.raises(ValueError, match="mode"):
        control.update({"mode": "broken", "token_lifetime_s": 5})
    assert control.token_lifetime_s is None
    control.update({"mode": "slow", "token_lifetime_s": 5})
    assert (control.mode, control.latency_s, control.token_lifetime_s) == ("slow", 0.5, 5)
    for bad, named in (
        ({"latency_s": -1}, "latency_s"),
        ({"token_lifetime_s": 0}, "token_lifetime_s"),
        ({"failure_status": 404}, "failure_status"),
        ({"x": 1}, "Unknown fields: x"),
        ([], "JSON object"),
    ):
        with pytest.raises(ValueError, match=named):
            control.update(bad)
