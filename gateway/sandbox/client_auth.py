"""The identity server's rules, free of HTTP: client authentication, the client-credentials
grant, and the run-time controls used to simulate an unhealthy identity server.

Error choices follow IdentityServer (Duende/IdentityServer4), which the real authority appears
to run (docs/exact-facts.md §1): an unknown client *or* a wrong secret is answered with 400
`invalid_client` (never 401, and never telling which of the two was wrong); a scope the client
may not have is 400 `invalid_scope`; any grant other than `client_credentials` is 400
`unsupported_grant_type`; a missing or repeated parameter is 400 `invalid_request`. The client
is authenticated before the grant is looked at, as IdentityServer does. HTTP Basic wins over
`client_id`/`client_secret` in the form when both are present.
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from gateway.sandbox.clients import Client

IDENTITY_MODES: tuple[str, ...] = ("normal", "slow", "failing", "refusing")


class OAuthError(Exception):
    """An OAuth2 error answer: `error` code, human description, HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True, slots=True)
class ClientGrant:
    """What a successful token request earns."""

    client_id: str
    scopes: tuple[str, ...]


def authenticate_client(
    clients: Mapping[str, Client], authorization: str | None, form: Mapping[str, Sequence[str]]
) -> Client:
    """Find the calling client from HTTP Basic or form credentials, or raise `invalid_client`."""
    client_id: str | None = None
    secret: str | None = None
    if authorization is not None and authorization[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise OAuthError("invalid_client", "Malformed Basic authorization header") from exc
        raw_id, sep, raw_secret = decoded.partition(":")
        if not sep:
            raise OAuthError("invalid_client", "Malformed Basic authorization header")
        # RFC 6749 §2.3.1: both parts are form-urlencoded before being joined.
        client_id, secret = unquote(raw_id), unquote(raw_secret)
    else:
        client_id = _single(form, "client_id")
        secret = _single(form, "client_secret")
    if not client_id:
        raise OAuthError("invalid_client", "No client credentials were presented")
    client = clients.get(client_id)
    if client is None or secret is None or not client.secret_matches(secret):
        raise OAuthError("invalid_client", "Unknown client or invalid client secret")
    return client


def grant_client_credentials(client: Client, form: Mapping[str, Sequence[str]]) -> ClientGrant:
    """Apply the client-credentials grant to an authenticated client's form."""
    grant_type = _single(form, "grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is missing")
    if grant_type != "client_credentials":
        raise OAuthError("unsupported_grant_type", f"grant_type '{grant_type}' is not supported")
    requested = (_single(form, "scope") or "").split()
    if not requested:
        return ClientGrant(client.client_id, client.allowed_scopes)
    refused = [s for s in requested if s not in client.allowed_scopes]
    if refused:
        raise OAuthError("invalid_scope", f"Scope not allowed for this client: {' '.join(refused)}")
    # Keep the caller's order, drop repeats.
    return ClientGrant(client.client_id, tuple(dict.fromkeys(requested)))


def _single(form: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = form.get(name, ())
    if len(values) > 1:
        raise OAuthError("invalid_request", f"Parameter '{name}' is repeated")
    return values[0] if values else None


@dataclass(slots=True)
class IdentityControl:
    """Run-time state of the simulated identity server, changed through `/_sandbox/identity`."""

    default_latency_s: float
    mode: str = "normal"
    latency_s: float = 0.0
    token_lifetime_s: int | None = None  # None: the sandbox config's lifetime
    failure_status: int = 503
    outcomes: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.latency_s = self.default_latency_s

    def record(self, outcome: str) -> None:
        """Count one token request by how it ended (`issued` or an OAuth2 error code)."""
        self.outcomes[outcome] += 1

    def update(self, body: Any) -> None:
        """Apply a control request, validating everything before changing anything."""
        if not isinstance(body, dict):
            raise ValueError("Expected a JSON object")  # noqa: TRY004 - answered as 400
        unknown = set(body) - {"mode", "latency_s", "token_lifetime_s", "failure_status"}
        if unknown:
            raise ValueError(f"Unknown fields: {', '.join(sorted(unknown))}")
        mode = body.get("mode", self.mode)
        if mode not in IDENTITY_MODES:
            raise ValueError(f"mode must be one of {', '.join(IDENTITY_MODES)}")
        latency = body.get("latency_s", self.latency_s)
        if isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0:
            raise ValueError("latency_s must be a number >= 0")
        lifetime = body.get("token_lifetime_s", self.token_lifetime_s)
        if lifetime is not None and (
            isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0
        ):
            raise ValueError("token_lifetime_s must be a positive integer or null")
        failure_status = body.get("failure_status", self.failure_status)
        if failure_status not in (500, 502, 503, 504):
            raise ValueError("failure_status must be 500, 502, 503 or 504")
        self.mode, self.latency_s = mode, float(latency)
        self.token_lifetime_s, self.failure_status = lifetime, failure_status

    def to_json(self, *, lifetime_s: int, revoked_through: int) -> dict[str, Any]:
        """The control endpoint's view, with the lifetime actually in force."""
        return {
            "mode": self.mode,
            "latency_s": self.latency_s,
            "token_lifetime_s": lifetime_s,
            "failure_status": self.failure_status,
            "revoked_through_serial": revoked_through,
            "token_requests": {
                "total": sum(self.outcomes.values()),
                "by_outcome": dict(sorted(self.outcomes.items())),
            },
        }
