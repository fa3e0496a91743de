"""The settings' rules beyond a field's type and bounds: lists split from one variable
(scopes, networks, host names), URLs and files checked at start-up, empty values read as unset,
and the rules that tie fields together (credentials per environment, one Redis URL source).

Each check raises ``ValueError`` with a message that names what is accepted and never echoes
the value (it might be the secret); :mod:`gateway.settings.loading` turns them into one
:class:`ConfigError` naming the variable.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Self

from pydantic import SecretStr, field_validator, model_validator
from yarl import URL

from gateway.egress import check_ca_bundle, check_proxy_url
from gateway.fleet.redis_url import check_redis_url, read_redis_url_file
from gateway.settings.fields import SettingsFields
from gateway.settings.values import ENV_PREFIX, Environment

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


class ValidatedSettings(SettingsFields):
    """The fields of :class:`SettingsFields` with the rules they must satisfy."""

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
    def _one_redis_url(self) -> Self:
        if self.redis_url is not None and self.redis_url_file is not None:
            raise ValueError("set REDIS_URL or REDIS_URL_FILE, not both")
        return self

    @field_validator("client_id", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() or None if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_credentials(self) -> Self:
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
