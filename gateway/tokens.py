"""The client-credentials token source: one bearer token shared by every request.

EXACT's identity server is a standard OpenID provider: the token endpoint is found through
``AUTHORITY_URL/.well-known/openid-configuration`` (unless ``TOKEN_URL`` is set) and tokens
are requested with HTTP Basic ``client_id:client_secret`` and a form body
``grant_type=client_credentials&scope=...`` (``shared/exact-api.md`` section 1.3).

What this module guarantees today: a token is only used while it is *usable* (it is dropped a
safety margin before it expires), and however many requests find no usable token at once,
exactly one token request is in flight; the others wait for it. The token and the secret never
leave this module except as the ``Authorization`` header value.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr
from yarl import URL

from gateway.errors import ConfigError, TokenUnavailable
from gateway.metrics import Metrics
from gateway.settings import Settings

log = logging.getLogger("exact_gateway.tokens")

DISCOVERY_PATH = "/.well-known/openid-configuration"
# A token is not used in its last 30 s, or its last tenth when it lives under 300 s
# (shared/product.md, "Token refresh"), so a request never reaches EXACT with a token that
# expires on the way.
SAFETY_MARGIN_SECONDS = 30.0
SHORT_LIFETIME_SECONDS = 300.0
# Used when the token response omits expires_in: short, so a wrong guess costs little.
DEFAULT_LIFETIME_SECONDS = 300


class CredentialsRejected(ConfigError):
    """The identity server refused our client id, secret or scopes (invalid_client/_scope)."""

    def __init__(self, error: str, description: str | None) -> None:
        self.error = error
        detail = f": {description}" if description else ""
        super().__init__(f"the identity server refused the credentials ({error}{detail})")


class TokenEndpointError(Exception):
    """The identity server could not be reached or gave an unusable answer."""


def basic_credentials(client_id: str, secret: str) -> str:
    """``Basic base64(client_id:client_secret)``, exactly as EXACT's documentation builds it."""
    raw = f"{client_id}:{secret}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def safety_margin(lifetime: float) -> float:
    """Seconds before expiry from which a token is no longer used."""
    if lifetime < SHORT_LIFETIME_SECONDS:
        return lifetime / 10
    return SAFETY_MARGIN_SECONDS


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str = field(repr=False)
    obtained_at: float  # monotonic clock
    lifetime: float
    expires_at_unix: float

    @property
    def usable_until(self) -> float:
        return self.obtained_at + self.lifetime - safety_margin(self.lifetime)

    def usable(self, now: float) -> bool:
        return now < self.usable_until


@dataclass(frozen=True, slots=True)
class TokenConfig:
    client_id: str
    client_secret: SecretStr | None
    client_secret_file: Path | None
    scopes: tuple[str, ...]
    authority_url: str
    token_url: str | None
    timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenConfig:
        return cls(
            client_id=settings.client_id or "",
            client_secret=settings.client_secret,
            client_secret_file=settings.client_secret_file,
            scopes=settings.scopes,
            authority_url=settings.resolved_authority_url(),
            token_url=settings.token_url,
            timeout=settings.token_timeout_seconds,
        )

    async def read_secret(self) -> str:
        """The current secret. The file is read at each fetch, so a rotated Secret is used."""
        if self.client_secret_file is not None:
            text = await asyncio.to_thread(self.client_secret_file.read_text, "utf-8")
            secret = text.strip()
            if not secret:
                raise ConfigError("EXACT_GATEWAY_CLIENT_SECRET_FILE: the file is empty")
            return secret
        if self.client_secret is None:
            raise ConfigError("EXACT_GATEWAY_CLIENT_SECRET: not set")
        return self.client_secret.get_secret_value()


class TokenSource:
    """Fetches, caches and hands out the shared bearer token."""

    def __init__(
        self,
        config: TokenConfig,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._session = session
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
        self._token: AccessToken | None = None
        self._token_endpoint: str | None = config.token_url
        self._inflight: asyncio.Future[AccessToken] | None = None
        self._fetch_count = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"<TokenSource client_id={self._config.client_id!r} token=<hidden>>"

    def has_usable_token(self) -> bool:
        return self._token is not None and self._token.usable(self._clock())

    async def get(self) -> str:
        """A usable token, fetching one (once, for all waiters) when there is none."""
        token = self._token
        if token is not None and token.usable(self._clock()):
            return token.value
        try:
            return (await self.refresh()).value
        except ConfigError as exc:
            raise TokenUnavailable(
                "the gateway has no access token: its credentials were refused",
                retry_after=30,
            ) from exc
        except TokenEndpointError as exc:
            raise TokenUnavailable(
                "the gateway has no access token: the identity server is unavailable",
                retry_after=5,
            ) from exc

    async def refresh(self) -> AccessToken:
        """Fetch a new token; concurrent callers share the one request in flight."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._fetch_done)
        # shield: one impatient caller being cancelled must not cancel everyone's fetch.
        return await asyncio.shield(self._inflight)

    def _fetch_done(self, future: asyncio.Future[AccessToken]) -> None:
        self._inflight = None
        if not future.cancelled() and future.exception() is None:
            self._token = future.result()

    async def _fetch(self) -> AccessToken:
        started = self._clock()
        result = "error"
        try:
            token = await self._request_token()
            result = "success"
            self.last_error = None
            self._fetch_count += 1
            self._metrics.token_expiry.set(token.expires_at_unix)
            log.info(
                "token obtained",
                extra={"fields": {"event": "token_refreshed", "expires_in": token.lifetime}},
            )
            return token
        except CredentialsRejected as exc:
            result = exc.error
            self.last_error = str(exc)
            log.error(  # noqa: TRY400 - the traceback would add nothing for a refused secret
                "token request refused: check the client id, secret and scopes",
                extra={"fields": {"event": "token_failed", "error": exc.error}},
            )
            raise
        except (TokenEndpointError, ConfigError) as exc:
            self.last_error = str(exc)
            log.warning(
                "token request failed",
                extra={"fields": {"event": "token_failed", "error": str(exc)}},
            )
            raise
        finally:
            self._metrics.token_requests.labels(result).inc()
            self._metrics.token_request_duration.observe(self._clock() - started)

    async def _request_token(self) -> AccessToken:
        endpoint = await self._discover()
        secret = await self._config.read_secret()
        form = {"grant_type": "client_credentials", "scope": " ".join(self._config.scopes)}
        headers = {"Authorization": basic_credentials(self._config.client_id, secret)}
        timeout = aiohttp.ClientTimeout(total=self._config.timeout)
        try:
            async with self._session.post(
                endpoint, data=form, headers=headers, timeout=timeout
            ) as resp:
                payload = await _json_or_none(resp)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._forget_endpoint()
            raise TokenEndpointError(f"token endpoint unreachable ({type(exc).__name__})") from None
        if status in {400, 401} and isinstance(payload, dict):
            error = str(payload.get("error", ""))
            if error in {"invalid_client", "invalid_scope", "unauthorized_client"}:
                description = payload.get("error_description")
                raise CredentialsRejected(error, str(description) if description else None)
        if status != 200 or not isinstance(payload, dict):
            self._forget_endpoint()
            raise TokenEndpointError(f"token endpoint answered HTTP {status}")
        return self._parse(payload)

    def _parse(self, payload: dict[str, Any]) -> AccessToken:
        value = payload.get("access_token")
        if not isinstance(value, str) or not value:
            raise TokenEndpointError("token response has no access_token")
        lifetime_raw = payload.get("expires_in", DEFAULT_LIFETIME_SECONDS)
        try:
            lifetime = float(lifetime_raw)
        except (TypeError, ValueError):
            raise TokenEndpointError("token response has an invalid expires_in") from None
        if lifetime <= 0:
            raise TokenEndpointError("token response has an invalid expires_in")
        return AccessToken(
            value=value,
            obtained_at=self._clock(),
            lifetime=lifetime,
            expires_at_unix=self._wall_clock() + lifetime,
        )

    async def _discover(self) -> str:
        if self._token_endpoint is not None:
            return self._token_endpoint
        url = self._config.authority_url + DISCOVERY_PATH
        timeout = aiohttp.ClientTimeout(total=self._config.timeout)
        try:
            async with self._session.get(url, timeout=timeout) as resp:
                document = await _json_or_none(resp)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokenEndpointError(f"discovery unreachable ({type(exc).__name__})") from None
        endpoint = document.get("token_endpoint") if isinstance(document, dict) else None
        if status != 200 or not isinstance(endpoint, str):
            raise TokenEndpointError(f"discovery document unusable (HTTP {status})")
        parsed = URL(endpoint)
        # Never send the secret in clear text to an endpoint an HTTPS authority did not vouch
        # for over HTTPS.
        authority_scheme = URL(self._config.authority_url).scheme
        if parsed.scheme not in {"http", "https"} or not parsed.host:
            raise TokenEndpointError("discovery names an invalid token endpoint")
        if authority_scheme == "https" and parsed.scheme != "https":
            raise TokenEndpointError("discovery names a non-HTTPS token endpoint")
        self._token_endpoint = endpoint
        return endpoint

    def _forget_endpoint(self) -> None:
        # A failing endpoint may have moved: look it up again next time, unless it was set.
        self._token_endpoint = self._config.token_url

    @property
    def token_endpoint(self) -> str | None:
        return self._token_endpoint

    def status(self) -> dict[str, Any]:
        """Token state for ``/token`` and ``/readyz``: timings only, never the token."""
        now = self._clock()
        token = self._token
        body: dict[str, Any] = {
            "client_id": self._config.client_id,
            "scopes": list(self._config.scopes),
            "token_endpoint": self._token_endpoint,
            "refresh_count": self._fetch_count,
            "last_error": self.last_error,
            "has_token": token is not None,
            "usable": token is not None and token.usable(now),
        }
        if token is not None:
            body["age_seconds"] = round(now - token.obtained_at, 3)
            body["expires_in_seconds"] = round(token.obtained_at + token.lifetime - now, 3)
            body["usable_for_seconds"] = round(max(0.0, token.usable_until - now), 3)
            body["expires_at_unix"] = round(token.expires_at_unix, 3)
        return body


async def _json_or_none(resp: aiohttp.ClientResponse) -> Any:
    try:
        return await resp.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        return None
