"""What the gateway can be told, and from where: every ``EXACT_GATEWAY_*`` field with its
default and bounds, grouped by concern (credentials and hosts, listeners, time limits,
resilience, practices, idempotency, fleet, the caller edge, lifecycle), and the sources they
are read from, highest priority first: keyword arguments (the command-line flags), the process
environment, a ``.env`` file, then the TOML file named by ``EXACT_GATEWAY_CONFIG_FILE``.

The checks that go beyond a field's type and bounds are in :mod:`gateway.settings.validation`;
what the rest of the gateway takes from these values, in :mod:`gateway.settings.derived`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gateway.errors import ConfigError
from gateway.settings.values import (
    CONFIG_FILE_VARIABLE,
    ENV_PREFIX,
    LOOPBACK,
    Environment,
    EventLoop,
    IPNetwork,
    LogFormat,
    LogLevel,
)


class SettingsFields(BaseSettings):
    """Everything the gateway can be told. Field names map to ``EXACT_GATEWAY_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    environment: Environment
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    scopes: Annotated[tuple[str, ...], NoDecode] = ()
    api_url: str | None = None
    authority_url: str | None = None
    token_url: str | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8480, ge=0, le=65535)
    admin_host: str = "0.0.0.0"
    admin_port: int = Field(default=8481, ge=0, le=65535)
    log_level: LogLevel = LogLevel.INFO
    log_format: LogFormat = LogFormat.JSON
    # Who may read the admin port's introspection endpoints (everything but /healthz, /readyz
    # and /metrics), and which Host names it answers besides IP literals and localhost.
    admin_introspection_from: Annotated[tuple[IPNetwork, ...], NoDecode] = LOOPBACK
    admin_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()

    # Corporate egress (gateway/egress.py): a private CA bundle instead of the system store,
    # and an HTTP CONNECT proxy, for calls to the EXACT API and the identity server.
    ca_bundle_file: Path | None = None
    egress_proxy_url: SecretStr | None = None

    # Time limits. Per-request deadlines grow into a full policy with the resilience work.
    # Total time a request may take: token wait, attempts and the waits between them.
    deadline_seconds: float = Field(default=60.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    attempt_timeout_seconds: float = Field(default=30.0, gt=0)
    token_timeout_seconds: float = Field(default=10.0, gt=0)
    # Token retries after an identity-server failure: capped exponential, full jitter.
    token_retry_base_seconds: float = Field(default=1.0, gt=0)
    token_retry_max_seconds: float = Field(default=60.0, gt=0)
    # Request bodies up to this size are buffered so they can be replayed (after a 401);
    # larger or chunked bodies stream and are never replayed.
    replay_buffer_bytes: int = Field(default=1024 * 1024, ge=0)
    # Retries (README "Resilience" says why each default is what it is).
    retry_max_attempts: int = Field(default=3, ge=1, le=10)
    retry_backoff_base_seconds: float = Field(default=1.0, gt=0)
    retry_backoff_max_seconds: float = Field(default=20.0, gt=0)
    retry_after_max_seconds: float = Field(default=300.0, ge=0)
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=10)
    retry_budget_min_retries: int = Field(default=3, ge=0)
    retry_budget_window_seconds: float = Field(default=10.0, ge=1)
    # Per-practice circuit breakers.
    breaker_consecutive_failures: int = Field(default=5, ge=1)
    breaker_failure_ratio: float = Field(default=0.5, gt=0, le=1)
    breaker_min_calls: int = Field(default=10, ge=1)
    breaker_window_seconds: float = Field(default=60.0, gt=0)
    breaker_open_seconds: float = Field(default=30.0, gt=0)
    breaker_open_max_seconds: float = Field(default=300.0, gt=0)
    breaker_open_jitter: float = Field(default=0.5, ge=0, lt=1)
    breaker_max_entries: int = Field(default=5000, ge=1)
    breaker_idle_seconds: float = Field(default=3600.0, gt=0)
    # The partner-wide breaker: the EXACT host unreachable, or its relay failing wholesale.
    upstream_breaker_failures: int = Field(default=5, ge=1)
    upstream_breaker_practices: int = Field(default=20, ge=2)
    # ...and only when this share of the distinct practices attempted in the window failed.
    upstream_breaker_practice_ratio: float = Field(default=0.8, gt=0, le=1)
    upstream_breaker_window_seconds: float = Field(default=10.0, gt=0)
    upstream_breaker_open_seconds: float = Field(default=5.0, gt=0)
    upstream_breaker_open_max_seconds: float = Field(default=60.0, gt=0)
    # Concurrency limits (bulkheads).
    practice_concurrency: int = Field(default=10, ge=1)
    global_concurrency: int = Field(default=10000, ge=1)
    # Operator pauses (README "Practices"): a JSON file watched for changes; unset, none.
    practice_pauses_file: Path | None = None
    practice_pauses_poll_seconds: float = Field(default=5.0, gt=0)
    # Knowing each practice (README "Practices"): version admission, subscriptions, probes.
    practice_version_admission: bool = True
    practice_version_ttl_seconds: float = Field(default=3600.0, gt=0)
    subscriptions_refresh_seconds: float = Field(default=300.0, gt=0)
    subscriptions_recheck_seconds: float = Field(default=10.0, ge=0)
    synthetic_probes: bool = True
    ledger_max_practices: int = Field(default=5000, ge=1)

    # Idempotency-Key records of POST/PATCH (README "Idempotency"), in memory only.
    idempotency_ttl_seconds: float = Field(default=86400.0, gt=0)
    idempotency_max_keys: int = Field(default=10000, ge=1)
    idempotency_max_response_bytes: int = Field(default=65536, ge=0)
    idempotency_max_stored_bytes: int = Field(default=16 * 1024 * 1024, ge=0)

    # Beyond one replica (README "Fleet"): the state file read back at start, and the
    # optional Redis shared by the replicas (its URL may hold a password: prefer the file).
    state_file: Path | None = None
    state_save_interval_seconds: float = Field(default=5.0, gt=0)
    redis_url: SecretStr | None = None
    redis_url_file: Path | None = None
    redis_timeout_seconds: float = Field(default=0.05, gt=0, le=5)
    redis_heartbeat_seconds: float = Field(default=1.0, gt=0, le=60)

    # Readiness: true restores the first round's rule (ready only while a token is usable).
    ready_requires_usable_token: bool = False

    # The caller edge (see README "The caller edge" for why each default is what it is).
    request_head_timeout_seconds: float = Field(default=10.0, gt=0)
    request_body_idle_seconds: float = Field(default=15.0, gt=0)
    response_write_idle_seconds: float = Field(default=30.0, gt=0)
    keepalive_idle_seconds: float = Field(default=120.0, gt=0)
    max_request_head_bytes: int = Field(default=32768, ge=1024, le=1024 * 1024)
    max_target_bytes: int = Field(default=8192, ge=256, le=1024 * 1024)
    max_connections: int = Field(default=1024, ge=1)
    admin_max_connections: int = Field(default=32, ge=1)

    # Lifecycle (see README "Shutdown"): drain stays below Kubernetes' default 30 s grace.
    shutdown_grace_seconds: float = Field(default=2.0, ge=0)
    drain_seconds: float = Field(default=20.0, ge=0)
    # The event loop: uvloop (libuv) by default on Linux, asyncio's own to rule it out.
    event_loop: EventLoop = EventLoop.UVLOOP

    # The sandbox started in-process by `serve --environment sandbox` / `check`.
    sandbox_token_lifetime_seconds: int = Field(default=3600, ge=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        config_file = os.environ.get(CONFIG_FILE_VARIABLE)
        if config_file:
            if not Path(config_file).is_file():
                raise ConfigError(f"{CONFIG_FILE_VARIABLE}: no such file: {config_file}")
            try:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            except tomllib.TOMLDecodeError as exc:
                # tomllib's message ends "(at line L, column C)": one line, no file content.
                raise ConfigError(
                    f"{CONFIG_FILE_VARIABLE}: {config_file}: not valid TOML: {exc}"
                ) from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"{CONFIG_FILE_VARIABLE}: {config_file}: cannot be read ({type(exc).__name__})"
                ) from None
        return tuple(sources)
