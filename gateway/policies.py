"""The settings turned into frozen policy values, once, for the parts that use them.

The core (resilience, tokens, idempotency, the request path's numbers) never imports the
settings module: it takes these values. :meth:`gateway.settings.Settings.policies` builds them
at start-up, so a setting is parsed and checked in exactly one place, and a test builds a
policy directly without going through the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.caller.limits import CallerLimits
from gateway.credentials import TokenConfig
from gateway.idempotency import IdempotencyPolicy
from gateway.ledger import LedgerPolicy
from gateway.practices.subscriptions import SubscriptionPolicy
from gateway.practices.versions import VersionPolicy
from gateway.resilience import ResiliencePolicy
from gateway.tokens import TokenPolicy


@dataclass(frozen=True, slots=True)
class ProxyPolicy:
    """The request path's own numbers (README "Configuration" says why each default)."""

    attempt_timeout: float = 30.0
    deadline: float = 60.0
    replay_buffer_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class LifecyclePolicy:
    """Readiness and shutdown (README "Shutdown")."""

    shutdown_grace: float = 2.0
    drain: float = 20.0
    ready_requires_usable_token: bool = False


@dataclass(frozen=True, slots=True)
class FleetPolicy:
    """Beyond one replica (README "Fleet"): the state file and the optional Redis."""

    state_file: Path | None = None
    save_interval: float = 5.0
    # May hold a password: never logged or shown (only its redacted form is).
    redis_url: str | None = field(default=None, repr=False)
    redis_timeout: float = 0.05
    heartbeat: float = 1.0

    @property
    def on(self) -> bool:
        return self.state_file is not None or self.redis_url is not None


@dataclass(frozen=True, slots=True)
class Policies:
    resilience: ResiliencePolicy
    tokens: TokenPolicy
    credentials: TokenConfig
    idempotency: IdempotencyPolicy
    proxy: ProxyPolicy
    lifecycle: LifecyclePolicy
    caller: CallerLimits  # the proxy port's (its connection cap is fitted to the fd limit)
    admin_caller: CallerLimits  # the admin port's: the same phases, its own connection cap
    practices: PracticesPolicy
    fleet: FleetPolicy = field(default_factory=FleetPolicy)


# Frozen values, so one instance can be every policy's default.
DEFAULT_LEDGER = LedgerPolicy()
DEFAULT_VERSIONS = VersionPolicy()
DEFAULT_SUBSCRIPTIONS = SubscriptionPolicy()


@dataclass(frozen=True, slots=True)
class PracticesPolicy:
    """What the gateway learns about each practice and how (README "Practices")."""

    ledger: LedgerPolicy = DEFAULT_LEDGER
    versions: VersionPolicy = DEFAULT_VERSIONS
    subscriptions: SubscriptionPolicy = DEFAULT_SUBSCRIPTIONS
    version_admission: bool = True
    synthetic_probes: bool = True
    pauses_file: Path | None = None
    pauses_poll: float = 5.0
    # The scopes the token is requested with: each feature needs its own.
    scopes: tuple[str, ...] = ()
    # The gateway's own calls to EXACT (look-ups, probes) in flight at once, and queued.
    background_concurrency: int = 4
    background_queue: int = 1000
    probe_scan_interval: float = 1.0
    attempt_timeout: float = 30.0
