"""Settings: parsed once at start-up, validated, frozen, then passed down.

This is the only module that reads the process environment. Sources, highest priority first:
command-line flags (passed in as keyword arguments), environment variables prefixed
``EXACT_GATEWAY_``, a ``.env`` file in the working directory, the TOML file named by
``EXACT_GATEWAY_CONFIG_FILE``, then the defaults below. Bad configuration raises
:class:`ConfigError` with one message naming the variable and what it accepts, and never
echoes the value (it might be the secret).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from yarl import URL

from gateway.caller.limits import CallerLimits
from gateway.credentials import TokenConfig
from gateway.egress import Egress, check_ca_bundle, check_proxy_url
from gateway.errors import ConfigError
from gateway.fleet.redis_url import check_redis_url, read_redis_url_file
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
from gateway.tokens import TokenPolicy

ENV_PREFIX = "EXACT_GATEWAY_"
CONFIG_FILE_VARIABLE = f"{ENV_PREFIX}CONFIG_FILE"
OTEL_PREFIX = "OTEL_"


class Environment(StrEnum):
    """The EXACT environments. QA and production share nothing, not even the identity server."""

    QA = "qa"
    PRODUCTION = "production"
    SANDBOX = "sandbox"


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


class EventLoop(StrEnum):
    UVLOOP = "uvloop"  # on Linux when installed (the default); otherwise asyncio's own
    ASYNCIO = "asyncio"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


# The real hosts, from the vendor's documentation (docs/exact-facts.md section 1).
ENVIRONMENT_URLS: dict[Environment, tuple[str, str]] = {
    Environment.QA: (
        "https://qa-api.ex.softwareofexcellence.com",
        "https://qa-auth.softwareofexcellence.com",
    ),
    Environment.PRODUCTION: (
        "https://api.ex.softwareofexcellence.com",
        "https://auth.softwareofexcellence.com",
    ),
}

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Loopback only: introspection is for an operator inside the pod (kubectl port-forward, exec).
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# A DNS name as the Host header carries it (RFC 1123 labels).
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")

_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6749 scope-token characters


def _base_url(value: str | None) -> str | None:
    """Validate an absolute http(s) base URL and drop a trailing slash (paths are appended)."""
    if value is None or value == "":
        return None
    url = URL(value)
    if url.scheme not in {"http", "https"} or not url.host:
        raise ValueError("must be an absolute http:// or https:// URL")
    if url.query_string or url.fragment or url.user or url.password:
        raise ValueError("must not carry credentials, a query or a fragment")
    return str(url).rstrip("/")


class TracingSettings(BaseSettings):
    """The standard OpenTelemetry variables that decide whether the gateway traces (README
    "Tracing"). Tracing is off unless they ask for it.

    Only the few that decide *whether* and *where* spans are exported are read and checked
    here, so a typo fails the start naming the variable. When tracing is on, the OpenTelemetry
    SDK reads everything else itself, as the specification says it does: ``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER(_ARG)``, ``OTEL_BSP_*``, and the
    exporter's headers, time-out, compression and certificates. They are read from the process
    environment only (not ``.env`` or the TOML file): the SDK would not see them there.
    """

    model_config = SettingsConfigDict(
        env_prefix=OTEL_PREFIX, env_file=None, extra="ignore", frozen=True
    )

    sdk_disabled: str | None = None
    traces_exporter: str | None = None
    exporter_otlp_endpoint: str | None = None
    exporter_otlp_traces_endpoint: str | None = None
    exporter_otlp_protocol: str | None = None
    exporter_otlp_traces_protocol: str | None = None

    @field_validator("traces_exporter", mode="after")
    @classmethod
    def _check_exporter(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().lower()
        if value not in {"otlp", "none"}:
            raise ValueError(
                "must be otlp or none (the otel extra installs the OTLP/HTTP exporter only)"
            )
        return value

    @field_validator("exporter_otlp_protocol", "exporter_otlp_traces_protocol", mode="after")
    @classmethod
    def _check_protocol(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if value.strip().lower() != "http/protobuf":
            raise ValueError("must be http/protobuf (the gRPC exporter is not installed)")
        return "http/protobuf"

    @field_validator("exporter_otlp_endpoint", "exporter_otlp_traces_endpoint", mode="after")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        url = URL(value.strip())
        if url.scheme not in {"http", "https"} or not url.host:
            raise ValueError("must be an absolute http:// or https:// URL")
        return str(url)

    @property
    def enabled(self) -> bool:
        """Tracing is on when OTEL_TRACES_EXPORTER is otlp, or when it is unset and an OTLP
        endpoint is given (an operator that injects only the endpoint wants traces); never
        when OTEL_SDK_DISABLED is true or the exporter is none."""
        if (self.sdk_disabled or "").strip().lower() == "true":
            return False
        if self.traces_exporter is not None:
            return self.traces_exporter == "otlp"
        return (self.exporter_otlp_endpoint or self.exporter_otlp_traces_endpoint) is not None


def load_tracing_settings() -> TracingSettings:
    """The OTEL_* variables, or one readable :class:`ConfigError` naming the bad one."""
    try:
        return TracingSettings()
    except ValidationError as exc:
        lines = [
            f"{OTEL_PREFIX}{'_'.join(str(part) for part in error['loc']).upper()}:"
            f" {str(error['msg']).removeprefix('Value error, ')}"
            for error in exc.errors(include_input=False)
        ]
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None


class Settings(BaseSettings):
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

    # Tracing is configured by the standard OTEL_* variables, not EXACT_GATEWAY_* ones: read
    # once with the rest of the settings (and carried along by model_copy).
    _tracing: TracingSettings = PrivateAttr(default_factory=load_tracing_settings)

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

    @field_validator("scopes", mode="before")
    @classmethod
    def _split_scopes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if isinstance(value, list | tuple):
            for scope in value:
                if not isinstance(scope, str) or not _SCOPE.match(scope):
                    raise ValueError("each scope must be a plain scope name like practice.get")
            return tuple(dict.fromkeys(value))  # de-duplicated, order kept
        return value

    @field_validator("admin_introspection_from", mode="before")
    @classmethod
    def _split_networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if isinstance(value, list | tuple):
            try:
                return tuple(ipaddress.ip_network(str(item), strict=False) for item in value)
            except ValueError:
                raise ValueError(
                    "must be a comma-separated list of addresses or CIDR blocks, like"
                    " 127.0.0.1/32,10.0.0.0/8"
                ) from None
        return value

    @field_validator("admin_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if isinstance(value, list | tuple):
            names = [str(item).strip().lower().rstrip(".") for item in value]
            if not all(_HOST_NAME.match(name) for name in names):
                raise ValueError(
                    "must be a comma-separated list of DNS names, like gateway.apps.svc"
                )
            return tuple(dict.fromkeys(names))
        return value

    @field_validator("ca_bundle_file", mode="after")
    @classmethod
    def _check_ca_bundle(cls, value: Path | None) -> Path | None:
        if value is not None:
            check_ca_bundle(value)
        return value

    @field_validator("egress_proxy_url", mode="before")
    @classmethod
    def _check_proxy(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            value = value.strip()
            return check_proxy_url(value) if value else None
        return value

    @field_validator("api_url", "authority_url", "token_url", mode="before")
    @classmethod
    def _check_url(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _base_url(value.strip())
        return value

    @field_validator("practice_pauses_file", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: Any) -> Any:
        # An empty variable (a Helm value left blank) means "no file", not the current directory.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("state_file", "redis_url_file", mode="before")
    @classmethod
    def _empty_fleet_path_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _check_redis_url(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            return check_redis_url(value) if value.strip() else None
        return value

    @field_validator("redis_url_file", mode="after")
    @classmethod
    def _check_redis_url_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_redis_url_file(value)
        return value

    @model_validator(mode="after")
    def _one_redis_url(self) -> Settings:
        if self.redis_url is not None and self.redis_url_file is not None:
            raise ValueError("set REDIS_URL or REDIS_URL_FILE, not both")
        return self

    @field_validator("client_id", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() or None if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_credentials(self) -> Settings:
        if self.client_secret is not None and self.client_secret_file is not None:
            raise ValueError(
                "set CLIENT_SECRET or CLIENT_SECRET_FILE, not both"
                " (a mounted secret file is preferred: it can be rotated without a restart)"
            )
        if self.environment is Environment.SANDBOX:
            return self
        missing = [
            name
            for name, present in (
                ("CLIENT_ID", self.client_id),
                (
                    "CLIENT_SECRET or CLIENT_SECRET_FILE",
                    self.client_secret or self.client_secret_file,
                ),
                ("SCOPES", self.scopes),
            )
            if not present
        ]
        if missing:
            raise ValueError(
                f"{ENV_PREFIX}{', '.join(missing)} required when ENVIRONMENT is"
                f" {self.environment.value}"
            )
        if self.client_secret_file is not None and not self.client_secret_file.is_file():
            raise ValueError(
                f"{ENV_PREFIX}CLIENT_SECRET_FILE: {self.client_secret_file} is not a readable file"
            )
        return self

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


def _describe(error: dict[str, Any]) -> str:
    """One line for one pydantic error, naming the variable and never echoing the input."""
    location = [str(part) for part in error.get("loc", ()) if part != "__root__"]
    variable = f"{ENV_PREFIX}{'__'.join(location).upper()}" if location else ""
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if error.get("type") == "missing":
        message = "required"
    if error.get("type") == "enum":
        expected = error.get("ctx", {}).get("expected", "")
        message = f"must be one of {expected}"
    if variable and location[0] == "environment" and error.get("type") == "missing":
        message = "required; choose one of 'qa', 'production' or 'sandbox'"
    return f"{variable}: {message}" if variable else message


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from every source, or raise one readable :class:`ConfigError`."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        lines = [_describe(dict(error)) for error in exc.errors(include_input=False)]
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None


class SandboxServerSettings(BaseSettings):
    """Settings of the standalone ``exact-gateway sandbox`` command."""

    model_config = SettingsConfigDict(
        env_prefix=f"{ENV_PREFIX}SANDBOX_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8482, ge=0, le=65535)
    token_lifetime_seconds: int = Field(default=3600, ge=1)


def load_sandbox_settings(**overrides: Any) -> SandboxServerSettings:
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return SandboxServerSettings(**given)
    except ValidationError as exc:
        lines = [
            _describe(dict(error)).replace(ENV_PREFIX, f"{ENV_PREFIX}SANDBOX_", 1)
            for error in exc.errors(include_input=False)
        ]
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None
