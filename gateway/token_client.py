"""The client of EXACT's identity server: discovery and the client-credentials token request.

EXACT's identity server is a standard OpenID provider: the token endpoint is found through
``AUTHORITY_URL/.well-known/openid-configuration`` (unless ``TOKEN_URL`` is set), and a token
is requested with HTTP Basic ``client_id:client_secret`` and a form body
``grant_type=client_credentials&scope=...`` (``docs/exact-facts.md`` section 1). Any provider
that follows the standard works, whatever path it names for its token endpoint and whether
its tokens are JWTs or opaque strings (the gateway never looks inside a token).

This is the one place where failures of the identity server are translated: a refused client
becomes :class:`CredentialsRejected` (a configuration problem, not worth retrying quickly),
anything else :class:`TokenEndpointError` with a ``kind`` that is also the metric label.

Trust: the client secret goes only where the configuration says. The discovery document must
name the configured authority as its ``issuer`` (OpenID Connect Discovery 1.0, section 4.3),
and its token endpoint must be on the authority's own origin (scheme, host and port) unless
``TOKEN_URL`` names one explicitly; no redirect is ever followed, since a redirect is exactly
how a secret would be walked to another origin. What comes back must be a bearer token that can
travel in a header: ``token_type`` Bearer (RFC 6749 section 7.1, case-insensitive) and a value
in RFC 6750's ``b64token`` syntax, so a token with CR/LF or any other byte that a header cannot
carry is refused here, once, instead of failing every request later.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from yarl import URL

from gateway.credentials import TokenConfig, basic_credentials
from gateway.errors import CredentialsRejected, TokenEndpointError
from gateway.tokens import Grant

DISCOVERY_PATH = "/.well-known/openid-configuration"
# Used when a token response omits expires_in: short, so a wrong guess costs little.
DEFAULT_LIFETIME_SECONDS = 300.0
MAX_LIFETIME_SECONDS = 86400.0
REFUSALS = frozenset({"invalid_client", "invalid_scope", "unauthorized_client"})
# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Far beyond any real JWT, and below the 8-16 KiB header limits of common servers.
MAX_TOKEN_BYTES = 8192


class TokenClient:
    """Discovers the token endpoint and requests client-credentials tokens."""

    def __init__(self, config: TokenConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self._session = session
        self._token_endpoint: str | None = config.token_url

    def __repr__(self) -> str:
        return f"<TokenClient client_id={self.config.client_id!r}>"

    @property
    def token_endpoint(self) -> str | None:
        return self._token_endpoint

    async def request_token(self) -> Grant:
        """One token request (after discovery if needed), or a translated failure."""
        endpoint = await self._discover()
        secret = await self.config.read_secret()
        form = {"grant_type": "client_credentials", "scope": " ".join(self.config.scopes)}
        headers = {"Authorization": basic_credentials(self.config.client_id, secret)}
        try:
            async with self._session.post(
                endpoint,
                data=form,
                headers=headers,
                timeout=self._timeout(),
                allow_redirects=False,
            ) as resp:
                payload = await _json_or_none(resp)
                status = resp.status
        except TimeoutError:
            self._forget_endpoint()
            raise TokenEndpointError("timeout", "token endpoint timed out") from None
        except aiohttp.ClientError as exc:
            self._forget_endpoint()
            raise TokenEndpointError(
                "unreachable", f"token endpoint unreachable ({type(exc).__name__})"
            ) from None
        if status in {400, 401} and isinstance(payload, dict):
            error = str(payload.get("error", ""))
            if error in REFUSALS:
                description = payload.get("error_description")
                raise CredentialsRejected(error, str(description) if description else None)
        if 300 <= status < 400:
            self._forget_endpoint()
            raise TokenEndpointError(
                "bad_response", f"token endpoint redirected (HTTP {status}); redirects are refused"
            )
        if status != 200 or not isinstance(payload, dict):
            self._forget_endpoint()
            kind = "server_error" if status >= 500 else "bad_response"
            raise TokenEndpointError(kind, f"token endpoint answered HTTP {status}")
        return _grant(payload)

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.config.timeout)

    async def _discover(self) -> str:
        if self._token_endpoint is not None:
            return self._token_endpoint
        url = self.config.authority_url + DISCOVERY_PATH
        try:
            async with self._session.get(
                url, timeout=self._timeout(), allow_redirects=False
            ) as resp:
                document = await _json_or_none(resp)
                status = resp.status
        except TimeoutError:
            raise TokenEndpointError("timeout", "discovery timed out") from None
        except aiohttp.ClientError as exc:
            raise TokenEndpointError(
                "unreachable", f"discovery unreachable ({type(exc).__name__})"
            ) from None
        if 300 <= status < 400:
            raise TokenEndpointError(
                "bad_response", f"discovery redirected (HTTP {status}); redirects are refused"
            )
        endpoint = document.get("token_endpoint") if isinstance(document, dict) else None
        if status != 200 or not isinstance(endpoint, str):
            kind = "server_error" if status >= 500 else "bad_response"
            raise TokenEndpointError(kind, f"discovery document unusable (HTTP {status})")
        issuer = document.get("issuer")
        authority = self.config.authority_url.rstrip("/")
        if not isinstance(issuer, str) or issuer.rstrip("/") != authority:
            raise TokenEndpointError(
                "bad_response",
                "discovery document's issuer is not EXACT_GATEWAY_AUTHORITY_URL; refused",
            )
        try:
            parsed = URL(endpoint)
        except ValueError:
            parsed = URL()
        if parsed.scheme not in {"http", "https"} or not parsed.host:
            raise TokenEndpointError("bad_response", "discovery names an invalid token endpoint")
        # The secret goes to the authority's own origin only (set TOKEN_URL for another).
        if parsed.origin() != URL(authority).origin():
            raise TokenEndpointError(
                "bad_response",
                "discovery names a token endpoint on another origin than the authority;"
                " refused (set EXACT_GATEWAY_TOKEN_URL to use it)",
            )
        self._token_endpoint = endpoint
        return endpoint

    def _forget_endpoint(self) -> None:
        # A failing endpoint may have moved: look it up again next time, unless it was set.
        self._token_endpoint = self.config.token_url


def _grant(payload: dict[str, Any]) -> Grant:
    value = payload.get("access_token")
    if not isinstance(value, str) or not value:
        raise TokenEndpointError("bad_response", "token response has no access_token")
    token_type = payload.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenEndpointError(
            "bad_response", "token response's token_type is not Bearer; refused"
        )
    if len(value) > MAX_TOKEN_BYTES or not B64TOKEN.fullmatch(value):
        # Never quote it: it is a credential, and its bytes may be what is wrong.
        raise TokenEndpointError(
            "bad_response", "token response's access_token is not a valid bearer token; refused"
        )
    try:
        lifetime = float(payload.get("expires_in", DEFAULT_LIFETIME_SECONDS))
    except (TypeError, ValueError):
        lifetime = float("nan")
    if not lifetime > 0:
        raise TokenEndpointError("bad_response", "token response has an invalid expires_in")
    # An absurd lifetime would postpone every refresh; a day is far beyond any real token.
    return Grant(value, min(lifetime, MAX_LIFETIME_SECONDS))


async def _json_or_none(resp: aiohttp.ClientResponse) -> Any:
    try:
        return await resp.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        return None
