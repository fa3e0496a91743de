"""Building the settings: :func:`load_settings` for the gateway and
:func:`load_sandbox_settings` for the standalone sandbox command, each raising one readable
:class:`ConfigError` that names every bad variable and never echoes a value.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.errors import ConfigError
from gateway.settings.derived import Settings
from gateway.settings.values import ENV_PREFIX


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
