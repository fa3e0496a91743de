"""Sandbox JWTs: signing, verification, expiry against a fake clock, revocation."""

from __future__ import annotations

import base64
import json

import pytest

from gateway.sandbox.token_issuer import TokenAuthority, TokenError
from tests.fakes import FakeClock

KEY = b"k" * 32


SANDBOX_EPOCH = 1_714_550_400.0  # the sandbox's data epoch (2024-05-01)


def _segment(token: str, index: int) -> dict[str, object]:
    part = token.split(".")[index]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def _issue(authority: TokenAuthority, lifetime: int = 60) -> str:
    return authority.issue(
        issuer="http://sandbox", client_id="c1", scopes=("a.get", "b.list"), lifetime_s=lifetime
    )


def test_issued_token_verifies_with_its_claims() -> None:
    """A fresh token verifies and carries client id, scopes and timing claims."""
    clock = FakeClock(SANDBOX_EPOCH)
    authority = TokenAuthority(KEY, clock)
    token = _issue(authority)
    claims = authority.verify(token)
    assert claims.client_id == "c1"
    assert claims.scopes == frozenset({"a.get", "b.list"})
    assert claims.expires_at == int(clock.now) + 60
    assert _segment(token, 0) == {"alg": "HS256", "typ": "at+jwt"}
    body = _segment(token, 1)
    assert {"iss", "sub", "client_id", "scope", "iat", "exp", "jti"} <= set(body)
    assert body["scope"] == "a.get b.list"


def test_token_expires_on_the_injected_clock() -> None:
    """Verification fails once the fake clock reaches `exp`, even for a cached token."""
    clock = FakeClock(SANDBOX_EPOCH)
    authority = TokenAuthority(KEY, clock)
    token = _issue(authority, lifetime=5)
    authority.verify(token)
    clock.now += 4.9
    authority.verify(token)
    clock.now += 0.1
    with pytest.raises(TokenError, match="expired"):
        authority.verify(token)


def test_tampered_token_is_refused() -> None:
    """Changing the claims breaks the signature."""
    authority = TokenAuthority(KEY, FakeClock(SANDBOX_EPOCH))
    header, _, signature = _issue(authority).split(".")
    forged = base64.urlsafe_b64encode(
        b'{"client_id":"x","scope":"all","iat":0,"exp":9e9,"jti":"1-a"}'
    )
    with pytest.raises(TokenError, match="signature"):
        authority.verify(f"{header}.{forged.decode().rstrip('=')}.{signature}")


def test_token_from_another_key_is_refused() -> None:
    """Each sandbox instance signs with its own key."""
    other = TokenAuthority(b"o" * 32, FakeClock(SANDBOX_EPOCH))
    with pytest.raises(TokenError):
        TokenAuthority(KEY, FakeClock(SANDBOX_EPOCH)).verify(_issue(other))


def test_alg_none_and_garbage_are_refused() -> None:
    """Unsigned tokens and strings that are not JWTs never verify."""
    authority = TokenAuthority(KEY, FakeClock(SANDBOX_EPOCH))
    _, claims, _ = _issue(authority).split(".")
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("=")
    for bad in (f"{none_header}.{claims}.", "not-a-jwt", "a.b.c", "...."):
        with pytest.raises(TokenError):
            authority.verify(bad)


def test_revoke_all_only_hits_tokens_issued_before() -> None:
    """Revocation invalidates earlier tokens and leaves later ones valid."""
    authority = TokenAuthority(KEY, FakeClock(SANDBOX_EPOCH))
    old = _issue(authority)
    authority.verify(old)
    assert authority.revoke_all() == 1
    with pytest.raises(TokenError, match="revoked"):
        authority.verify(old)
    authority.verify(_issue(authority))
    assert authority.revoked_through == 1


def test_verification_cache_stays_bounded() -> None:
    """Thousands of distinct tokens do not grow the cache without limit."""
    authority = TokenAuthority(KEY, FakeClock(SANDBOX_EPOCH))
    for _ in range(5000):
        authority.verify(_issue(authority))
    assert len(authority._cache) <= 4096
