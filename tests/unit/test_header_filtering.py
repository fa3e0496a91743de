"""Header filtering both ways, pinned down name by name (the rules run on every request)."""

from __future__ import annotations

import re

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.header_policy import forwarded_upstream, is_forwarding_header
from gateway.upstream import request_headers, response_headers

# The rule as it was first written, as a regular expression: the set-and-prefix version
# must drop exactly the same header names.
_AS_REGEX = re.compile(
    r"forwarded|via|x-forwarded-.*|x-original-.*|x-host|x-real-ip|x-client-ip|client-ip"
    r"|true-client-ip|x-cluster-client-ip|cf-connecting-ip|fastly-client-ip"
    r"|x-proxyuser-ip|x-arr-.*|x-appengine-.*|x-envoy-.*|x-scheme|x-url-scheme|front-end-https"
)
_DROPPED = [
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
    "x-forwarded-for",
    "x-forwarded-",
    "x-forwarded-host",
    "x-original-url",
    "x-original-",
    "x-arr-ssl",
    "x-appengine-user-ip",
    "x-envoy-external-address",
]
# Near misses: they must pass.
_PASSED = [
    "forward",
    "forwardeds",
    "vias",
    "x-hosts",
    "x-forwarded",
    "x-forwardedfor",
    "x-original",
    "x-arr",
    "x-envoy",
    "x-real-ipv6",
    "x-schemes",
    "accept",
    "content-type",
    "idempotency-key",
    "traceparent",
    "x-api-version",
    "continuationtoken",
    "a",
]
_NAMES = [*_DROPPED, *_PASSED]


@pytest.mark.parametrize("name", _NAMES)
def test_forwarding_names_match_the_original_rule(name: str) -> None:
    """Every family member is dropped and every near miss passes, as before."""
    assert is_forwarding_header(name) is (_AS_REGEX.fullmatch(name) is not None)


def _incoming(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_request_headers_follow_forwarded_upstream() -> None:
    """What is sent is exactly what forwarded_upstream allows, in the caller's order, plus
    ours; names the caller's Connection header lists are dropped too."""
    pairs = [
        ("Accept", "a"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("Connection", "keep-alive, X-Secret-Hop"),
        ("X-Secret-Hop", "s"),
        ("Proxy-Authorization", "p"),
        ("Authorization", "Bearer caller"),
        ("Host", "evil"),
        ("X-Request-ID", "caller-id"),
        ("Via", "1.1 x"),
        ("Idempotency-Key", "k"),
        ("accept", "b"),
        ("TE", "trailers"),
    ]
    sent = request_headers(_incoming(*pairs), "tok", "rid")
    declared = frozenset({"keep-alive", "x-secret-hop"})
    expected = [(n, v) for n, v in pairs if n.lower() != "x-request-id"]
    expected = [(n, v) for n, v in expected if forwarded_upstream(n.lower(), declared)]
    assert (
        sent[: len(expected)]
        == expected
        == [
            ("Accept", "a"),
            ("Idempotency-Key", "k"),
            ("accept", "b"),
        ]
    )
    assert sent[len(expected) :] == [
        ("Authorization", "Bearer tok"),
        ("X-Request-ID", "rid"),
        ("x-api-version", "1.0"),
    ]


def test_the_callers_api_version_is_kept() -> None:
    sent = request_headers(_incoming(("X-Api-Version", "2.0")), "tok", "rid")
    assert [v for n, v in sent if n.lower() == "x-api-version"] == ["2.0"]


def test_response_headers_drop_hop_by_hop_and_replace_the_request_id() -> None:
    """Fixed hop-by-hop fields, proxy-*, names EXACT's Connection declares (in any of its
    Connection fields) and EXACT's X-Request-ID go; repeats and order stay."""
    incoming = [
        ("Content-Type", "application/json"),
        ("Connection", "X-Hop-One"),
        ("Set-Cookie", "a=1"),
        ("X-Hop-One", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authenticate", "Basic"),
        ("connection", "keep-alive, x-hop-two"),
        ("X-HOP-TWO", "2"),
        ("X-Request-ID", "theirs"),
        ("Transfer-Encoding", "chunked"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "2"),
    ]
    out = response_headers(incoming, "ours")
    assert list(out.items()) == [
        ("Content-Type", "application/json"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "2"),
        ("X-Request-ID", "ours"),
    ]


def test_response_headers_without_connection() -> None:
    out = response_headers([("A", "1"), ("upgrade", "h2c"), ("B", "2")], "r")
    assert list(out.items()) == [("A", "1"), ("B", "2"), ("X-Request-ID", "r")]


def test_connection_close_declares_a_field_named_close() -> None:
    """``Connection: close`` lists the token ``close``: a field of that name is dropped,
    as any field the Connection header names."""
    out = response_headers([("Connection", "close"), ("Close", "x"), ("A", "1")], "r")
    assert list(out.items()) == [("A", "1"), ("X-Request-ID", "r")]
    out = response_headers([("Connection", "Keep-Alive"), ("Close", "x")], "r")
    assert list(out.items()) == [("Close", "x"), ("X-Request-ID", "r")]
