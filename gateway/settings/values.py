"""The settings' vocabularies: the environment-variable prefixes, the enums an operator picks
from (environment, log format and level, event loop), the real EXACT hosts of each environment,
and the admin port's default audience. Kept apart so the CLI, the logs and the tests can name
a choice without building the settings, and so every other settings room shares one spelling.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum

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
