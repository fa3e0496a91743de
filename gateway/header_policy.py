"""Which of a caller's request headers reach EXACT, and what the headers actually sent mean.

Pure functions over header names and values (no aiohttp). Three rules:

- **Forwarding headers are dropped.** ``Forwarded``, every ``X-Forwarded-*``, ``X-Original-*``
  and the client-address headers that proxies and CDNs set (``X-Real-IP``, ``X-Host``,
  ``True-Client-IP``, ...): ASP.NET's forwarded-headers middleware honours some of them, so a
  caller could change the scheme, host, path base or client address EXACT believes in. The
  gateway is the client EXACT talks to; it forwards no claim about anyone else. This is a
  deny-list by family rather than an allow-list because EXACT's own end-to-end headers
  (``continuationToken``, ``x-api-version``, ``Idempotency-Key``, ``traceparent``, ...) are
  open-ended and must pass untouched; every family that rewrites routing or identity is
  matched by prefix, so a new member of a family is dropped too.
- **Keyed-ness follows what is sent.** A request counts as carrying an ``Idempotency-Key`` only
  if the header survives the hop-by-hop rules: ``Connection: Idempotency-Key`` strips it, and
  then the request must not be retried as if EXACT could de-duplicate it.
- **Header values are forwarded as the bytes the caller sent.** The server decodes header
  bytes as UTF-8 (invalid bytes become surrogate escapes) and the client re-encodes them as
  UTF-8, silently dropping the escapes. Valid UTF-8 (obs-text included) therefore passes byte
  for byte; a value that is not valid UTF-8 cannot, so it is refused with 400 instead of being
  altered in transit. (aiohttp's client offers no way to write other bytes short of replacing
  its serializer; the gateway's own client in ``gateway/http1`` encodes with
  ``surrogateescape`` and sends them exactly, so this check can go when that client is wired.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from gateway.errors import BadRequest

# RFC 9110 section 7.6.1 hop-by-hop fields, plus the legacy ones proxies still meet.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    }
)
# Request headers a caller must not choose: who we are (Authorization), where the request
# goes (Host, and the rewrite/override headers that IIS and ASP.NET honour), the gateway's
# own controls, and Expect (the gateway answers 100-continue itself and then sends the body
# straight on, so EXACT is never asked to).
CALLER_MUST_NOT_SET = frozenset(
    {
        "host",
        "authorization",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-gateway-timeout",
        "expect",
    }
)
_FORWARDING = re.compile(
    r"forwarded|via|x-forwarded-.*|x-original-.*|x-host|x-real-ip|x-client-ip|client-ip"
    r"|true-client-ip|x-cluster-client-ip|cf-connecting-ip|fastly-client-ip"
    r"|x-proxyuser-ip|x-arr-.*|x-appengine-.*|x-envoy-.*|x-scheme|x-url-scheme|front-end-https"
)
IDEMPOTENCY_KEY = "idempotency-key"
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def connection_named(connection_values: Iterable[str]) -> frozenset[str]:
    """Header names listed in ``Connection``: hop-by-hop by declaration (RFC 9110 7.6.1)."""
    return frozenset(
        token.strip().lower()
        for value in connection_values
        for token in value.split(",")
        if token.strip()
    )


def is_hop_by_hop(name: str, declared: frozenset[str]) -> bool:
    """``name`` (lower case) is hop-by-hop: fixed by the RFC or named in ``Connection``."""
    return name in HOP_BY_HOP or name.startswith("proxy-") or name in declared


def is_forwarding_header(name: str) -> bool:
    """``name`` (lower case) claims something about the client or the original URL."""
    return _FORWARDING.fullmatch(name) is not None


def forwarded_upstream(name: str, declared: frozenset[str]) -> bool:
    """Whether a caller's header ``name`` (lower case) is sent on to EXACT."""
    return not (
        name in CALLER_MUST_NOT_SET or is_hop_by_hop(name, declared) or is_forwarding_header(name)
    )


def sends_idempotency_key(headers: Mapping[str, str], connection_values: Iterable[str]) -> bool:
    """The request reaches EXACT with an ``Idempotency-Key`` (see the module docstring)."""
    if IDEMPOTENCY_KEY not in {name.lower() for name in headers}:
        return False
    return forwarded_upstream(IDEMPOTENCY_KEY, connection_named(connection_values))


def check_values(headers: Iterable[tuple[str, str]]) -> None:
    """Refuse a header that could not be forwarded as the bytes the caller sent."""
    for name, value in headers:
        if _has_undecodable_bytes(value) or _has_undecodable_bytes(name):
            shown = "(unreadable name)" if _has_undecodable_bytes(name) else name[:64]
            raise BadRequest(f"header {shown} is not valid UTF-8 and cannot be forwarded unchanged")


def _has_undecodable_bytes(text: str) -> bool:
    # surrogateescape maps each byte that is not valid UTF-8 to U+DC80..U+DCFF. The ASCII
    # test first keeps the common case to one C-level scan.
    return not text.isascii() and _ESCAPED_BYTE.search(text) is not None
