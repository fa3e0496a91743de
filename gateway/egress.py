"""Corporate egress: the TLS trust and the outbound proxy of every call the gateway makes.

Clusters behind a corporate egress often see EXACT's certificates re-signed by a private CA
(TLS inspection) and reach the internet only through an HTTP CONNECT proxy. Two settings cover
that, for both the EXACT API session and the identity-server session:

- ``CA_BUNDLE_FILE``: a PEM file of CA certificates used *instead of* the system store.
  Verification stays on (hostname and chain): the bundle changes whom we trust, never whether.
- ``EGRESS_PROXY_URL``: ``http://[user:pass@]host:port``. aiohttp opens a ``CONNECT`` tunnel
  through it for ``https://`` targets (so the proxy sees only the host name, never a path,
  query or token) and sends the user and password as ``Proxy-Authorization: Basic``.

Both are checked at start-up by :mod:`gateway.settings`; this module turns them into the
arguments of :class:`aiohttp.ClientSession`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from yarl import URL

PROXY_SCHEMES = frozenset({"http", "https"})


def check_ca_bundle(path: Path) -> None:
    """Raise ``ValueError`` unless ``path`` is a readable PEM file with a CA certificate."""
    try:
        ssl.create_default_context(cafile=str(path))
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise ValueError(f"{path} is not a readable file") from None
    except (ssl.SSLError, UnicodeDecodeError, ValueError):
        raise ValueError(f"{path} holds no PEM CA certificate") from None


def check_proxy_url(value: str) -> str:
    """Validate an egress proxy URL; the messages never repeat the value (it may hold a
    password)."""
    try:
        url = URL(value)
        port = url.explicit_port
    except ValueError:
        raise ValueError("must be a URL like http://[user:pass@]host:port") from None
    if url.scheme not in PROXY_SCHEMES:
        raise ValueError("must be an http:// (or https://) proxy URL")
    if not url.host:
        raise ValueError("must name the proxy host, like http://proxy.example:3128")
    if port is None:
        raise ValueError("must name the proxy port, like http://proxy.example:3128")
    if url.path not in ("", "/") or url.query_string or url.fragment:
        raise ValueError("must not carry a path, a query or a fragment")
    return value


@dataclass(frozen=True)
class Egress:
    """What every outbound session is built with: whom to trust, and where to go through."""

    ca_bundle_file: Path | None = None
    proxy_url: str | None = None

    def ssl_context(self) -> ssl.SSLContext | bool:
        """The bundle as a verifying context, or ``True`` (aiohttp's default: system store)."""
        if self.ca_bundle_file is None:
            return True
        return ssl.create_default_context(cafile=str(self.ca_bundle_file))

    @property
    def proxy(self) -> URL | None:
        return URL(self.proxy_url) if self.proxy_url else None

    def __repr__(self) -> str:
        # The proxy URL may carry a password: never print it.
        proxy = "set" if self.proxy_url else "unset"
        return f"Egress(ca_bundle_file={self.ca_bundle_file!s}, proxy={proxy})"
