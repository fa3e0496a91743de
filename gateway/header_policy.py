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
  bytes as UTF-8 with ``surrogateescape`` (bytes that are not UTF-8 become U+DC80..U+DCFF)
  and the upstream client (``gateway/http1``) encodes them back the same way, so obs-text
  passes byte for byte whether or not it is UTF-8; nothing is refused or altered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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
# Forwarding headers: these names exactly, and every name that starts with a family prefix.
# Set membership and one ``startswith`` are a fraction of a regular expression's cost, and
# they run for every header of every request.
_FORWARDING_NAMES = frozenset(
    {
        "forwarded",
        "via",
        "x-host",
        "x-real-ip",
        "x-client-ip",
        "client-ip",
        "true-client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-proxyuser-ip",
        "x-scheme",
        "x-url-scheme",
        "front-end-https",
    }
)
_FORWARDING_PREFIXES = ("x-forwarded-", "x-original-", "x-arr-", "x-appengine-", "x-envoy-")
# Every name a caller's header is never sent under whatever its Connection header says, and
# the prefixes that drop a name (proxy-* is hop-by-hop): forwarded_upstream in two lookups.
NEVER_FORWARDED = CALLER_MUST_NOT_SET | HOP_BY_HOP | _FORWARDING_NAMES
NEVER_FORWARDED_PREFIXES = ("proxy-", *_FORWARDING_PREFIXES)
IDEMPOTENCY_KEY = "idempotency-key"


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
    return name in _FORWARDING_NAMES or name.startswith(_FORWARDING_PREFIXES)


def forwarded_upstream(name: str, declared: frozenset[str]) -> bool:
    """Whether a caller's header ``name`` (lower case) is sent on to EXACT."""
    return not (
        name in NEVER_FORWARDED or name.startswith(NEVER_FORWARDED_PREFIXES) or name in declared
    )


def sends_idempotency_key(headers: Mapping[str, str], connection_values: Iterable[str]) -> bool:
    """The request reaches EXACT with an ``Idempotency-Key`` (see the module docstring)."""
    if IDEMPOTENCY_KEY not in {name.lower() for name in headers}:
        return False
    return forwarded_upstream(IDEMPOTENCY_KEY, connection_named(connection_values))
