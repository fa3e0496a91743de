"""HS256 JSON Web Tokens for the simulated identity server: issue, verify, revoke.

Implemented with the standard library (hmac, hashlib, base64, json) so the sandbox adds no
dependency. The API's hot path verifies a token on every request, so verified tokens are kept
in a small bounded cache keyed by the token string; expiry and revocation are still checked on
every use, against the injected clock, because those change while a token sits in the cache.

Revocation works by issue order: every token carries its serial number in its `jti`
(`"<serial>-<random>"`), and revoking remembers the first serial that is still good.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_HEADER = {"alg": "HS256", "typ": "at+jwt"}
_CACHE_LIMIT = 4096


class TokenError(Exception):
    """A bearer token that must be refused; the message is the `error_description`."""


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """The claims of a token that verified, in the shape the API needs."""

    client_id: str
    scopes: frozenset[str]
    issued_at: int
    expires_at: int
    serial: int


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_segment(value: dict[str, Any]) -> str:
    return _b64encode(json.dumps(value, separators=(",", ":")).encode())


class TokenAuthority:
    """Signs and verifies the access tokens of one sandbox instance."""

    def __init__(self, key: bytes, clock: Callable[[], float]) -> None:
        self._key = key
        self._clock = clock
        self._next_serial = 1
        self._first_valid_serial = 1
        self._cache: dict[str, IssuedToken] = {}

    def issue(
        self, *, issuer: str, client_id: str, scopes: tuple[str, ...], lifetime_s: int
    ) -> str:
        """Sign a new token for `client_id` that expires `lifetime_s` seconds from now."""
        serial = self._next_serial
        self._next_serial += 1
        now = int(self._clock())
        claims = {
            "iss": issuer,
            "sub": client_id,
            "client_id": client_id,
            "scope": " ".join(scopes),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime_s,
            "jti": f"{serial}-{secrets.token_hex(8)}",
        }
        signing_input = f"{_json_segment(_HEADER)}.{_json_segment(claims)}"
        return f"{signing_input}.{_b64encode(self._sign(signing_input))}"

    def verify(self, token: str) -> IssuedToken:
        """Return the claims of a valid token, or raise `TokenError` saying why not."""
        claims = self._cache.get(token)
        if claims is None:
            claims = self._verify_signature_and_shape(token)
            if len(self._cache) >= _CACHE_LIMIT:
                # Dicts keep insertion order, so this drops the oldest entry.
                del self._cache[next(iter(self._cache))]
            self._cache[token] = claims
        if claims.serial < self._first_valid_serial:
            raise TokenError("The token has been revoked")
        if self._clock() >= claims.expires_at:
            raise TokenError(f"The token expired at {claims.expires_at}")
        return claims

    def revoke_all(self) -> int:
        """Invalidate every token issued so far; return how many serials that covered."""
        self._first_valid_serial = self._next_serial
        return self._first_valid_serial - 1

    @property
    def revoked_through(self) -> int:
        """The highest serial that is revoked (0 when nothing was revoked)."""
        return self._first_valid_serial - 1

    def _sign(self, signing_input: str) -> bytes:
        return hmac.new(self._key, signing_input.encode("ascii"), hashlib.sha256).digest()

    def _verify_signature_and_shape(self, token: str) -> IssuedToken:
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("The token is not a JWT")
        header_b64, claims_b64, signature_b64 = parts
        try:
            header = json.loads(_b64decode(header_b64))
            signature = _b64decode(signature_b64)
            signing_input = f"{header_b64}.{claims_b64}"
            expected = self._sign(signing_input)
        except (ValueError, binascii.Error, UnicodeError) as exc:
            raise TokenError("The token is malformed") from exc
        # Check the algorithm before the signature so that "alg": "none" can never pass.
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            raise TokenError("The token algorithm is not accepted")
        if not hmac.compare_digest(signature, expected):
            raise TokenError("The token signature is invalid")
        try:
            claims = json.loads(_b64decode(claims_b64))
            serial = int(str(claims["jti"]).split("-", 1)[0])
            return IssuedToken(
                client_id=str(claims["client_id"]),
                scopes=frozenset(str(claims["scope"]).split()),
                issued_at=int(claims["iat"]),
                expires_at=int(claims["exp"]),
                serial=serial,
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise TokenError("The token claims are malformed") from exc
