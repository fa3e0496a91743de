"""The caller edge's pure rules: canonical paths, the method allow-list, header policy, caps."""

from __future__ import annotations

import pytest

from gateway.caller.limits import RESERVED_FDS, connection_cap
from gateway.errors import BadRequest, MethodNotAllowed
from gateway.header_policy import (
    forwarded_upstream,
    is_forwarding_header,
    sends_idempotency_key,
)
from gateway.routes import check_canonical, parse_target


@pytest.mark.parametrize(
    "target",
    [
        "/v1/%50ractices/UKTEST1/details",  # %50 = P
        "/v1/practice%73/UKTEST1/details",  # %73 = s
        "/%761/Practices/UKTEST1/details",  # %76 = v
        "/v1/Practices/UKTEST%31/details",  # %31 = 1
        "/v1/Practices/UK%5FA/details",  # %5F = _
        "/v1/Practices/UK%2dA/details",  # %2d = -
        "/v1/Practices/UKTEST1/%7Edetails",  # %7E = ~
        "//v1/Practices/UKTEST1/details",
        "/v1//Practices/UKTEST1/details",
        "/v1/Practices/UKTEST1//details",
        "/v1;x=1/Practices/UKTEST1/details",
        "/v1/Practices;/UKTEST1/details",
        "/v1/Practices/UKTEST1;jsessionid=1/details",
        "/v1/Practices/%u0055KTEST1/details",
        "/v1/Practices/UKTEST1/%zzdetails",
        "/v1/Practices/UKTEST1/details%",
        "/v1/Practices/UKTEST1/details%4",
        "/v1\\Practices\\UKTEST1\\details",
        "/v1/Practices%2FUKTEST1/details",
        "/v1/Practices%5cUKTEST1/details",
    ],
)
def test_non_canonical_spellings_are_refused(target: str) -> None:
    """Every spelling ASP.NET would decode or collapse into another path gets 400."""
    with pytest.raises(BadRequest):
        parse_target("GET", target)


@pytest.mark.parametrize(
    ("target", "practice"),
    [
        ("/v1/Practices/UKTEST1/details", "UKTEST1"),
        ("/v1/PRACTICES/uktest1/details/", "uktest1"),
        ("/v1/Practices/UKTEST1/Patients/a%20b", "UKTEST1"),  # reserved/other escapes pass
        ("/v1/Practices/UKTEST1/Patients/a%3Ab%2B", "UKTEST1"),
        ("/v1/Practices/UKTEST1/Appointments?from=%41&x=a//b;c", "UKTEST1"),  # query untouched
    ],
)
def test_canonical_spellings_pass(target: str, practice: str) -> None:
    """Canonical paths (escapes of reserved characters, any query) are accepted as they are."""
    parsed = parse_target("GET", target)
    assert parsed.practice_id == practice
    assert parsed.path == target


def test_trailing_slash_is_not_an_empty_segment() -> None:
    """A single trailing slash is how ASP.NET routes tolerate it; only // inside is refused."""
    check_canonical("/v1/Subscriptions/active/")


@pytest.mark.parametrize(
    "method", ["TRACE", "TRACK", "PROPFIND", "MKCOL", "M-SEARCH", "NOTIFY", "LINK", "get"]
)
def test_methods_outside_the_allow_list_are_405(method: str) -> None:
    """TRACE (which would echo the bearer token), WebDAV and SSDP methods are never forwarded."""
    with pytest.raises(MethodNotAllowed) as caught:
        parse_target(method, "/v1/Subscriptions/active")
    assert caught.value.status == 405
    assert caught.value.headers("r")["Allow"] == "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_allowed_methods_pass(method: str) -> None:
    """The seven methods EXACT's API uses are forwarded."""
    assert parse_target(method, "/v1/Subscriptions/active").route == "/v1/Subscriptions/active"


def test_connect_stays_400_as_the_contract_says() -> None:
    """CONNECT keeps the contract's 400 bad_request rather than 405."""
    with pytest.raises(BadRequest, match="CONNECT"):
        parse_target("CONNECT", "/v1/Subscriptions/active")


@pytest.mark.parametrize(
    "name",
    [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-forwarded-host",
        "x-forwarded-anything-new",
        "x-original-host",
        "x-original-for",
        "x-original-proto",
        "x-host",
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "via",
    ],
)
def test_forwarding_headers_are_dropped(name: str) -> None:
    """Headers that claim another client, scheme, host or path base never reach EXACT."""
    assert is_forwarding_header(name)
    assert not forwarded_upstream(name, frozenset())


@pytest.mark.parametrize(
    "name",
    [
        "continuationtoken",
        "x-api-version",
        "idempotency-key",
        "traceparent",
        "tracestate",
        "content-type",
        "content-encoding",
        "content-length",
        "accept",
        "if-match",
        "x-custom",
        "x-forwarded",  # not a member of the X-Forwarded-* family
    ],
)
def test_end_to_end_headers_pass(name: str) -> None:
    """EXACT's own and unknown end-to-end headers pass untouched."""
    assert forwarded_upstream(name, frozenset())


def test_expect_is_answered_here_not_forwarded() -> None:
    """Expect is handled by the gateway (it sends 100 Continue itself)."""
    assert not forwarded_upstream("expect", frozenset())


@pytest.mark.parametrize(
    ("headers", "connection", "keyed"),
    [
        ({"Idempotency-Key": "k"}, [], True),
        ({"idempotency-key": "k"}, ["keep-alive"], True),
        ({"Idempotency-Key": "k"}, ["Idempotency-Key"], False),
        ({"Idempotency-Key": "k"}, ["keep-alive, IDEMPOTENCY-KEY"], False),
        ({}, [], False),
    ],
)
def test_keyed_is_decided_from_the_headers_sent(
    headers: dict[str, str], connection: list[str], keyed: bool
) -> None:
    """Connection: Idempotency-Key strips the key, so the request is not keyed."""
    assert sends_idempotency_key(headers, connection) is keyed


@pytest.mark.parametrize(
    ("wanted", "fd_limit", "admin", "cap"),
    [
        (1024, 1048576, 32, 1024),
        (1024, 256, 32, (256 - 32 - RESERVED_FDS) // 2),
        (1024, 1024, 32, (1024 - 32 - RESERVED_FDS) // 2),
        (10, 1024, 32, 10),
        (1024, 16, 32, 1),
    ],
)
def test_connection_cap_stays_under_the_fd_limit(
    wanted: int, fd_limit: int, admin: int, cap: int
) -> None:
    """Two descriptors per caller connection plus the admin port's and the process's own."""
    assert connection_cap(wanted, fd_limit, admin) == cap
