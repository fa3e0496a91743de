"""Settings: parsed once at start-up, validated, frozen, then passed down.

This is the only package that reads the process environment. Sources, highest priority first:
command-line flags (passed in as keyword arguments), environment variables prefixed
``EXACT_GATEWAY_``, a ``.env`` file in the working directory, the TOML file named by
``EXACT_GATEWAY_CONFIG_FILE``, then the defaults. Bad configuration raises
:class:`ConfigError` with one message naming the variable and what it accepts, and never
echoes the value (it might be the secret).

The rooms, in the order a value passes through them:

* :mod:`~gateway.settings.values`: the vocabularies (prefixes, environments and their hosts,
  log format and level, event loop, the admin port's default audience);
* :mod:`~gateway.settings.fields`: every field with its default and bounds, and the sources;
* :mod:`~gateway.settings.validation`: the rules beyond a field's type;
* :mod:`~gateway.settings.derived`: :class:`Settings`, with the frozen policies and resolved
  hosts the rest of the gateway takes;
* :mod:`~gateway.settings.tracing`: the standard ``OTEL_*`` variables, read alongside;
* :mod:`~gateway.settings.loading`: :func:`load_settings` and the sandbox command's settings.

Everything is re-exported here: the rest of the gateway imports from ``gateway.settings``.
"""

from __future__ import annotations

from gateway.settings.derived import Settings
from gateway.settings.loading import (
    SandboxServerSettings,
    load_sandbox_settings,
    load_settings,
)
from gateway.settings.tracing import TracingSettings, load_tracing_settings
from gateway.settings.values import (
    CONFIG_FILE_VARIABLE,
    ENV_PREFIX,
    ENVIRONMENT_URLS,
    LOOPBACK,
    OTEL_PREFIX,
    Environment,
    EventLoop,
    IPNetwork,
    LogFormat,
    LogLevel,
)

__all__ = [
    "CONFIG_FILE_VARIABLE",
    "ENVIRONMENT_URLS",
    "ENV_PREFIX",
    "LOOPBACK",
    "OTEL_PREFIX",
    "Environment",
    "EventLoop",
    "IPNetwork",
    "LogFormat",
    "LogLevel",
    "SandboxServerSettings",
    "Settings",
    "TracingSettings",
    "load_sandbox_settings",
    "load_settings",
    "load_tracing_settings",
]
