"""Who may ask the admin port what: the rule that keeps introspection from strangers.

The admin port listens on every address (kubelet probes it and Prometheus scrapes it by the
pod IP), but most of what it says is nobody else's business: ``/token`` names the partner's
client id, scopes and token endpoint, ``/breakers`` and the status page say which practices
are failing. So:

- ``/healthz``, ``/readyz`` and ``/metrics`` answer any caller (probes and scrapes);
- every other path (``/``, ``/status``, ``/token``, ``/breakers``, ``/practices`` and whatever
  is added later: deny by default) answers only callers whose address is in
  ``ADMIN_INTROSPECTION_FROM`` (loopback by default: ``kubectl port-forward`` and ``exec``
  arrive from loopback), others get 403;
- whatever the path, a ``Host`` header that is neither an IP literal, ``localhost``, nor a name
  in ``ADMIN_ALLOWED_HOSTS`` gets 421: a page in a browser on the cluster network that
  rebinds its own DNS name to the pod's address still sends its own name as ``Host``, and is
  refused before anything is read. Probes and scrapes address the pod by IP.

The decision is pure (no aiohttp): :func:`decide` takes the caller's address, the ``Host``
header and the path, and returns the refusal or ``None``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
LOCAL_NAMES = frozenset({"localhost"})


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str
    title: str
    detail: str


MISDIRECTED = Refusal(
    421,
    "misdirected_request",
    "Host not served by this admin port",
    "the admin port answers only requests addressed to an IP address, localhost or a name"
    " in ADMIN_ALLOWED_HOSTS",
)
FORBIDDEN = Refusal(
    403,
    "introspection_forbidden",
    "Introspection is not open to this address",
    "this endpoint answers only callers in ADMIN_INTROSPECTION_FROM (loopback by default);"
    " /healthz, /readyz and /metrics answer everyone",
)


def host_name(header: str) -> str:
    """The host part of a ``Host`` header, lower case, without port, brackets or final dot."""
    value = header.strip().lower()
    if value.startswith("["):  # [v6]:port
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _address(remote: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not remote:
        return None
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return None
    # A dual-stack listener reports IPv4 callers as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class AdminAccess:
    """The admin port's access rule, built once from the settings."""

    introspection_from: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    allowed_hosts: frozenset[str] = frozenset()

    @classmethod
    def of(cls, networks: Iterable[IPNetwork], hosts: Iterable[str]) -> AdminAccess:
        return cls(tuple(networks), frozenset(host_name(h) for h in hosts))

    def host_allowed(self, header: str | None) -> bool:
        # No Host at all (HTTP/1.0) cannot come from a browser, so it cannot be rebinding.
        if header is None:
            return True
        name = host_name(header)
        return _is_ip_literal(name) or name in LOCAL_NAMES or name in self.allowed_hosts

    def may_introspect(self, remote: str | None) -> bool:
        address = _address(remote)
        return address is not None and any(address in net for net in self.introspection_from)

    def decide(self, remote: str | None, host: str | None, path: str) -> Refusal | None:
        if not self.host_allowed(host):
            return MISDIRECTED
        if path in OPEN_PATHS or self.may_introspect(remote):
            return None
        return FORBIDDEN
