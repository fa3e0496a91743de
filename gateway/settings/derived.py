"""The settings as the rest of the gateway uses them: :class:`Settings` adds to the validated
fields the frozen policies each part takes (:meth:`Settings.policies`, built once at the
composition root), the egress (CA bundle and proxy), the OpenTelemetry settings read alongside,
and the EXACT hosts resolved from the environment.
"""

from __future__ import annotations

import dataclasses

from pydantic import PrivateAttr

from gateway.caller.limits import CallerLimits
from gateway.credentials import TokenConfig
from gateway.egress import Egress
from gateway.errors import ConfigError
from gateway.fleet.redis_url import read_redis_url_file
from gateway.idempotency import IdempotencyPolicy
from gateway.ledger import LedgerPolicy
from gateway.policies import (
    FleetPolicy,
    LifecyclePolicy,
    Policies,
    PracticesPolicy,
    ProxyPolicy,
)
from gateway.practices.subscriptions import SubscriptionPolicy
from gateway.practices.versions import VersionPolicy
from gateway.resilience import BreakerPolicy, ResiliencePolicy, RetryPolicy
from gateway.settings.tracing import TracingSettings, load_tracing_settings
from gateway.settings.validation import ValidatedSettings
from gateway.settings.values import ENV_PREFIX, ENVIRONMENT_URLS, Environment
from gateway.tokens import TokenPolicy


class Settings(ValidatedSettings):
    """Everything the gateway can be told, validated, and what its parts take from it.

    Field names map to ``EXACT_GATEWAY_<NAME>`` (:class:`SettingsFields` lists them).
    """

    # Tracing is configured by the standard OTEL_* variables, not EXACT_GATEWAY_* ones: read
    # once with the rest of the settings (and carried along by model_copy).
    _tracing: TracingSettings = PrivateAttr(default_factory=load_tracing_settings)

    # -- derived values -------------------------------------------------------------------

    def policies(self) -> Policies:
        """The settings as the frozen values the parts of the gateway take (built once)."""
        jitter = self.breaker_open_jitter
        caller = CallerLimits(
            head_timeout=self.request_head_timeout_seconds,
            body_idle=self.request_body_idle_seconds,
            write_idle=self.response_write_idle_seconds,
            keepalive_idle=self.keepalive_idle_seconds,
            max_head_bytes=self.max_request_head_bytes,
            max_target_bytes=self.max_target_bytes,
            max_connections=self.max_connections,
        )
        return Policies(
            resilience=ResiliencePolicy(
                retry=RetryPolicy(
                    max_attempts=self.retry_max_attempts,
                    backoff_base=self.retry_backoff_base_seconds,
                    backoff_max=self.retry_backoff_max_seconds,
                    retry_after_max=self.retry_after_max_seconds,
                ),
                budget_ratio=self.retry_budget_ratio,
                budget_floor=self.retry_budget_min_retries,
                budget_window=self.retry_budget_window_seconds,
                practice_concurrency=self.practice_concurrency,
                global_concurrency=self.global_concurrency,
                breaker=BreakerPolicy(
                    consecutive=self.breaker_consecutive_failures,
                    ratio=self.breaker_failure_ratio,
                    min_calls=self.breaker_min_calls,
                    window=self.breaker_window_seconds,
                    open_base=self.breaker_open_seconds,
                    open_max=self.breaker_open_max_seconds,
                    jitter=jitter,
                ),
                breaker_max_entries=self.breaker_max_entries,
                breaker_idle=self.breaker_idle_seconds,
                upstream=BreakerPolicy(
                    consecutive=self.upstream_breaker_failures,
                    ratio=1.0,
                    min_calls=2**31,  # consecutive failures only
                    window=self.upstream_breaker_window_seconds,
                    open_base=self.upstream_breaker_open_seconds,
                    open_max=self.upstream_breaker_open_max_seconds,
                    jitter=jitter,
                ),
                upstream_practices=self.upstream_breaker_practices,
                upstream_practice_ratio=self.upstream_breaker_practice_ratio,
                upstream_window=self.upstream_breaker_window_seconds,
            ),
            tokens=TokenPolicy(
                retry_base=self.token_retry_base_seconds, retry_cap=self.token_retry_max_seconds
            ),
            credentials=TokenConfig(
                client_id=self.client_id or "",
                client_secret=self.client_secret,
                client_secret_file=self.client_secret_file,
                scopes=self.scopes,
                authority_url=self.resolved_authority_url(),
                token_url=self.token_url,
                timeout=self.token_timeout_seconds,
            ),
            idempotency=IdempotencyPolicy(
                ttl=self.idempotency_ttl_seconds,
                max_keys=self.idempotency_max_keys,
                max_response_bytes=self.idempotency_max_response_bytes,
                max_stored_bytes=self.idempotency_max_stored_bytes,
            ),
            proxy=ProxyPolicy(
                attempt_timeout=self.attempt_timeout_seconds,
                deadline=self.deadline_seconds,
                replay_buffer_bytes=self.replay_buffer_bytes,
            ),
            caller=caller,
            admin_caller=dataclasses.replace(caller, max_connections=self.admin_max_connections),
            lifecycle=LifecyclePolicy(
                shutdown_grace=self.shutdown_grace_seconds,
                drain=self.drain_seconds,
                ready_requires_usable_token=self.ready_requires_usable_token,
            ),
            practices=PracticesPolicy(
                ledger=LedgerPolicy(max_entries=self.ledger_max_practices),
                versions=VersionPolicy(ttl=self.practice_version_ttl_seconds),
                subscriptions=SubscriptionPolicy(
                    refresh_interval=self.subscriptions_refresh_seconds,
                    recheck_interval=self.subscriptions_recheck_seconds,
                ),
                version_admission=self.practice_version_admission,
                synthetic_probes=self.synthetic_probes,
                pauses_file=self.practice_pauses_file,
                pauses_poll=self.practice_pauses_poll_seconds,
                scopes=self.scopes,
                attempt_timeout=self.attempt_timeout_seconds,
            ),
            fleet=FleetPolicy(
                state_file=self.state_file,
                save_interval=self.state_save_interval_seconds,
                redis_url=self._redis_url(),
                redis_timeout=self.redis_timeout_seconds,
                heartbeat=self.redis_heartbeat_seconds,
            ),
        )

    def _redis_url(self) -> str | None:
        if self.redis_url_file is not None:
            return read_redis_url_file(self.redis_url_file)
        return self.redis_url.get_secret_value() if self.redis_url is not None else None

    @property
    def egress(self) -> Egress:
        proxy = self.egress_proxy_url
        return Egress(self.ca_bundle_file, proxy.get_secret_value() if proxy else None)

    @property
    def tracing(self) -> TracingSettings:
        """The OTEL_* variables that turn tracing on (see :class:`TracingSettings`)."""
        return self._tracing

    @property
    def uses_inprocess_sandbox(self) -> bool:
        """The sandbox environment without an explicit API_URL runs the simulator in-process."""
        return self.environment is Environment.SANDBOX and self.api_url is None

    def resolved_api_url(self) -> str:
        if self.api_url is not None:
            return self.api_url
        if self.environment is Environment.SANDBOX:
            raise ConfigError(f"{ENV_PREFIX}API_URL: not known until the sandbox is started")
        return ENVIRONMENT_URLS[self.environment][0]

    def resolved_authority_url(self) -> str:
        if self.authority_url is not None:
            return self.authority_url
        if self.environment is Environment.SANDBOX:
            # The sandbox serves its identity server on the same origin as its API.
            return self.resolved_api_url()
        return ENVIRONMENT_URLS[self.environment][1]
