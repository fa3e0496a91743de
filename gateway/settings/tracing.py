"""The OpenTelemetry variables (``OTEL_*``) that decide whether and where the gateway traces.

They are the standard ones, not ``EXACT_GATEWAY_*``, and are read from the process environment
only, so they live in their own small settings model beside the gateway's.
"""

from __future__ import annotations

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from yarl import URL

from gateway.errors import ConfigError
from gateway.settings.values import OTEL_PREFIX


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
