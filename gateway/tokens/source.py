"""The shared bearer token: when to fetch it, who waits for it, and what to do when it fails.

One token serves every request. Its life, in the order things happen:

* **Start-up**: the background loop (:meth:`TokenSource.run`) fetches the first token at once;
  ``/readyz`` stays false until it is held.
* **Refresh**: at 80% of the token's lifetime, ±5% random jitter so that replicas started
  together drift apart, the loop fetches a new one while the old is still served. Requests
  never wait for a refresh while a usable token exists.
* **Usable**: a token is not used in its last 30 s, or its last tenth when it lives less than
  300 s, so it cannot expire on its way to EXACT (README "Tokens").
* **Single flight**: however many requests find no usable token at once, one token request
  is in flight and the rest wait for it.
* **401 from EXACT**: one refresh per token generation, however many requests saw the 401
  (:meth:`TokenSource.replace`); a token EXACT refused is never sent again. If EXACT still
  refuses a token minted moments ago, the 401 stands rather than spinning the identity server.
* **Identity server failing**: retries with capped exponential backoff and full jitter; a
  still-usable token keeps being served meanwhile; once none is usable, requests get 503
  ``token_unavailable`` with ``Retry-After`` at once (they do not each hammer the identity
  server). Refused credentials back off far longer: retrying a wrong secret quickly achieves
  nothing, but a changed secret file (Kubernetes rotating a Secret) triggers a retry at once.
* **Never stuck**: every change of the schedule (a failure on any path, a 401 dropping the
  token, a success) wakes the background loop, which then recomputes when to act. Without
  that, a fetch that a request triggered and that failed left the loop asleep until the old
  refresh time, and a gateway with no traffic stayed without a token for most of an hour.
* **Never a storm**: token requests start at least ``min_fetch_interval`` apart whatever the
  identity server or EXACT say, and a lifetime below ``min_lifetime`` is scheduled as that
  floor (an ``expires_in`` of 0.001 would otherwise mean a token request per event-loop turn).

Everything time-related goes through the injected clock and random source, so the schedule is
tested without sleeping (``tests/unit/test_token_schedule.py``). The schedule's numbers and the
token's value types are in :mod:`gateway.tokens.schedule`; this module holds the state that
changes and the background loop that acts on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.credentials import TokenConfig
from gateway.errors import ConfigError, CredentialsRejected, TokenEndpointError, TokenUnavailable
from gateway.metrics import Metrics
from gateway.tokens.schedule import AccessToken, Grant, TokenPolicy

# Told of each token fetch's end (its metric label, and the new token's lifetime on success)
# and of EXACT refusing the token (``rejected_by_exact``): the status page's token history.
TokenListener = Callable[[str, float | None], None]

log = logging.getLogger("exact_gateway.tokens")


class Identity(Protocol):
    """What the token source needs from the identity server (see :mod:`gateway.token_client`)."""

    config: TokenConfig

    @property
    def token_endpoint(self) -> str | None: ...

    async def request_token(self) -> Grant: ...


class TokenSource:
    """Holds, refreshes and hands out the shared bearer token."""

    def __init__(
        self,
        identity: Identity,
        metrics: Metrics,
        policy: TokenPolicy | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self._identity = identity
        self._metrics = metrics
        self.policy = policy if policy is not None else TokenPolicy()
        self._clock = clock
        # Jitter, not secrecy: an ordinary PRNG, seeded from the OS so replicas differ.
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self._token: AccessToken | None = None
        self._inflight: asyncio.Future[AccessToken] | None = None
        self._generation = 0
        self._refresh_at = 0.0
        self._retry_at: float | None = None
        self._failures = 0
        self._refused = False
        self._last_unauthorized_refresh = float("-inf")
        self._last_fetch_started = float("-inf")
        self._unauthorized_interval = self.policy.unauthorized_refresh_interval
        self._lifetime_floored = False
        # Set whenever the schedule changes, so the background loop recomputes its wait.
        self._wake = asyncio.Event()
        self._secret_stamp = identity.config.secret_file_stamp()
        self.last_error: str | None = None
        self.ready_event = asyncio.Event()
        self._listeners: list[TokenListener] = []

    def __repr__(self) -> str:
        return f"<TokenSource client_id={self._identity.config.client_id!r} token=<hidden>>"

    # -- what requests use ------------------------------------------------------------------

    def watch(self, listener: TokenListener) -> None:
        """Call ``listener`` after every fetch and every token EXACT refused."""
        self._listeners.append(listener)

    def _tell(self, result: str, lifetime: float | None) -> None:
        for listener in self._listeners:
            listener(result, lifetime)

    def has_usable_token(self) -> bool:
        return self._token is not None and self._token.usable(self._clock.monotonic())

    async def get(self, wait: float | None = None) -> str:
        """A usable token; waits (up to ``wait`` seconds) only when none is held."""
        token = self._token
        now = self._clock.monotonic()
        if token is not None and token.usable(now):
            return token.value
        if self._inflight is None and self._retry_at is not None and now < self._retry_at:
            # Backing off: answer at once instead of adding load to a failing identity server.
            raise self._unavailable(self._retry_at - now)
        try:
            async with asyncio.timeout(wait):
                return (await self.refresh()).value
        except TimeoutError:
            raise TokenUnavailable(
                "timed out waiting for an access token from the identity server", retry_after=1
            ) from None
        except (ConfigError, TokenEndpointError):
            now = self._clock.monotonic()
            retry_in = (self._retry_at - now) if self._retry_at is not None else 1.0
            raise self._unavailable(retry_in) from None

    async def replace(self, rejected: str) -> str | None:
        """EXACT answered 401 to ``rejected``: a token to replay with, or None if the 401 stands.

        Raises :class:`TokenUnavailable` when no token can be had at all.
        """
        now = self._clock.monotonic()
        current = self._token
        if current is not None and current.usable(now):
            if current.value != rejected:
                return current.value  # another request already replaced it
            if self._inflight is None:
                since = now - self._last_unauthorized_refresh
                if since < self._unauthorized_interval:
                    return None
                # Refused again soon after the last such refresh: EXACT keeps refusing fresh
                # tokens (a clock skew, a hostile identity server), so back off; a token that
                # served for a while resets it.
                if since < 2 * self._unauthorized_interval:
                    self._unauthorized_interval = min(
                        self.policy.retry_cap, 2 * self._unauthorized_interval
                    )
                else:
                    self._unauthorized_interval = self.policy.unauthorized_refresh_interval
                self._last_unauthorized_refresh = now
                self._token = None  # never send a token EXACT has refused
                self._wake.set()
                self._tell("rejected_by_exact", None)
                log.warning(
                    "EXACT refused the access token; fetching a new one",
                    extra={"fields": {"event": "token_rejected"}},
                )
        # No usable token (or a refresh already under way): wait for one, or answer 503.
        return await self.get()

    def _unavailable(self, retry_in: float) -> TokenUnavailable:
        reason = "the identity server is unavailable"
        if self._refused:
            reason = "its credentials were refused"
        return TokenUnavailable(
            f"the gateway has no usable access token: {reason}", retry_after=max(1.0, retry_in)
        )

    # -- fetching ---------------------------------------------------------------------------

    async def refresh(self) -> AccessToken:
        """Fetch a new token; concurrent callers share the one request in flight."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._fetch_done)
        # shield: one impatient caller being cancelled must not cancel everyone's fetch.
        return await asyncio.shield(self._inflight)

    def _fetch_done(self, future: asyncio.Future[AccessToken]) -> None:
        self._inflight = None
        if not future.cancelled():
            future.exception()  # retrieved here, so an unawaited failure is not reported

    async def _fetch(self) -> AccessToken:
        # Rate limit: inside the single flight, so every waiter shares the one pause.
        pause = self._last_fetch_started + self.policy.min_fetch_interval - self._clock.monotonic()
        if pause > 0:
            await self._clock.sleep(pause)
        started = self._last_fetch_started = self._clock.monotonic()
        result = "success"
        try:
            grant = await self._identity.request_token()
        except CredentialsRejected as exc:
            result = exc.error
            self._failed(str(exc), refused=True)
            raise
        except ConfigError as exc:
            result = "config"
            self._failed(str(exc), refused=True)
            raise
        except TokenEndpointError as exc:
            result = exc.kind
            self._failed(str(exc), refused=False)
            raise
        except Exception as exc:
            # A failure nobody foresaw must still schedule the next try, or the loop stalls.
            result = "bad_response"
            self._failed(f"unexpected token error ({type(exc).__name__})", refused=False)
            raise TokenEndpointError("bad_response", "unexpected token error") from exc
        finally:
            self._metrics.token_requests.labels(result).inc()
            self._metrics.token_request_duration.observe(self._clock.monotonic() - started)
            if result != "success":
                self._tell(result, None)
        return self._succeeded(grant)

    def _succeeded(self, grant: Grant) -> AccessToken:
        now = self._clock.monotonic()
        self._generation += 1
        lifetime = max(grant.lifetime, self.policy.min_lifetime)
        self._lifetime_floored = lifetime != grant.lifetime
        if self._lifetime_floored:
            log.warning(
                "the identity server issued a token that lives less than the floor; scheduling"
                " it as if it lived the floor",
                extra={
                    "fields": {
                        "event": "token_lifetime_floored",
                        "expires_in": grant.lifetime,
                        "floor": self.policy.min_lifetime,
                    }
                },
            )
        token = AccessToken(
            value=grant.value,
            generation=self._generation,
            obtained_at=now,
            lifetime=lifetime,
            expires_at_unix=self._clock.wall() + lifetime,
        )
        self._token = token
        self._refresh_at = now + self.policy.refresh_delay(lifetime, self._rng)
        self._wake.set()
        self._retry_at = None
        self._failures = 0
        self._refused = False
        self.last_error = None
        self._metrics.token_expiry.set(token.expires_at_unix)
        self._tell("success", lifetime)
        log.info(
            "access token obtained",
            extra={
                "fields": {
                    "event": "token_refreshed",
                    "generation": token.generation,
                    "expires_in": round(lifetime, 1),
                    "next_refresh_in": round(self._refresh_at - now, 1),
                }
            },
        )
        if not self.ready_event.is_set():
            self.ready_event.set()
            log.info("ready", extra={"fields": {"event": "ready"}})
        return token

    def _failed(self, message: str, *, refused: bool) -> None:
        now = self._clock.monotonic()
        self._failures += 1
        self._refused = refused
        delay = self.policy.retry_delay(self._failures, refused, self._rng)
        self._retry_at = now + delay
        self.last_error = message
        self._wake.set()
        fields = {
            "event": "token_failed",
            "error": message,
            "consecutive_failures": self._failures,
            "retry_in": round(delay, 3),
            "token_usable": self._token is not None and self._token.usable(now),
        }
        if refused:
            log.error(
                "token request refused: check the client id, secret and scopes",
                extra={"fields": fields},
            )
        else:
            log.warning("token request failed", extra={"fields": fields})

    # -- the background loop ----------------------------------------------------------------

    def due(self, now: float) -> bool:
        """Should the background loop fetch now?"""
        if self._inflight is not None:
            return False
        if self._retry_at is not None:
            return now >= self._retry_at
        return self._token is None or now >= self._refresh_at

    def next_wakeup(self, now: float) -> float:
        """Seconds until the background loop has something to do."""
        if self._retry_at is not None:
            wait = self._retry_at - now
        elif self._token is None:
            wait = 0.0
        else:
            wait = self._refresh_at - now
        if self._identity.config.client_secret_file is not None:
            wait = min(wait, self.policy.secret_poll)
        return max(0.0, wait)

    def schedule_invariant_holds(self, now: float) -> bool:
        """With no fetch in flight, the loop has a next try unless a usable token is held.

        Checked by the property test after every random event; cheap enough to log on.
        """
        if self._inflight is not None or (self._token is not None and self._token.usable(now)):
            return True
        return self._retry_at is not None or self._token is None or self._refresh_at <= now

    def secret_file_changed(self) -> bool:
        """Notice a replaced secret file; after a failure, retry with it at once."""
        stamp = self._identity.config.secret_file_stamp()
        if stamp == self._secret_stamp:
            return False
        self._secret_stamp = stamp
        log.info("client secret file changed", extra={"fields": {"event": "secret_changed"}})
        if self._retry_at is not None:
            self._retry_at = self._clock.monotonic()
            self._wake.set()
        return True

    async def run(self) -> None:
        """Fetch at start, refresh before expiry, retry with backoff; until cancelled."""
        while True:
            self._wake.clear()
            await self._pause(self.next_wakeup(self._clock.monotonic()))
            self.secret_file_changed()
            if self.due(self._clock.monotonic()):
                # Failures are recorded, logged and scheduled by _fetch; nothing to add here.
                with contextlib.suppress(ConfigError, TokenEndpointError):
                    await self.refresh()

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the schedule changes meanwhile."""
        if self._wake.is_set():
            return
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    # -- visibility -------------------------------------------------------------------------

    @property
    def token_endpoint(self) -> str | None:
        return self._identity.token_endpoint

    def status(self) -> dict[str, Any]:
        """Token state for ``/token`` and ``/readyz``: timings only, never the token."""
        now = self._clock.monotonic()
        token = self._token
        body: dict[str, Any] = {
            "client_id": self._identity.config.client_id,
            "scopes": list(self._identity.config.scopes),
            "token_endpoint": self._identity.token_endpoint,
            "has_token": token is not None,
            "usable": token is not None and token.usable(now),
            "refresh_count": self._generation,
            "consecutive_failures": self._failures,
            "last_error": self.last_error,
            "credentials_refused": self._refused,
            "lifetime_floored": self._lifetime_floored,
            "retry_in_seconds": (
                round(max(0.0, self._retry_at - now), 3) if self._retry_at is not None else None
            ),
        }
        if token is not None:
            body["generation"] = token.generation
            body["age_seconds"] = round(now - token.obtained_at, 3)
            body["expires_in_seconds"] = round(token.obtained_at + token.lifetime - now, 3)
            body["usable_for_seconds"] = round(max(0.0, token.usable_until - now), 3)
            body["expires_at_unix"] = round(token.expires_at_unix, 3)
            body["next_refresh_in_seconds"] = round(max(0.0, self._refresh_at - now), 3)
        return body
