"""Request serialisation: the client owns the framing, and nothing can split the head.

Pure functions, no sockets; plus a pin of the package's public surface, which the wiring of
the proxy depends on.
"""

from __future__ import annotations

import inspect

import pytest

import gateway.http1
from gateway.http1 import InvalidRequest, UpstreamClient, UpstreamResponse
from gateway.http1.request import CHUNKED, build_head
from tests.http1.conftest import TIMEOUTS


def lines(head: bytes) -> list[str]:
    return head.decode("latin-1").split("\r\n")


async def body():
    yield b"x"


def test_head_is_sent_as_given_with_our_host_and_framing():
    """Target byte for byte, caller headers in order and spelling, Host ours."""
    head, streamed, keep_alive = build_head(
        "GET", "/v1/a%2Fb?q=%20x", "api:8443", [("X-Request-ID", "r1"), ("accept", "*/*")], None
    )
    assert (
        head == b"GET /v1/a%2Fb?q=%20x HTTP/1.1\r\nHost: api:8443\r\nX-Request-ID: r1\r\n"
        b"accept: */*\r\n\r\n"
    )
    assert (streamed, keep_alive) == (0, True)


def test_undecodable_target_bytes_are_restored():
    """A target kept with surrogateescape by the caller's server goes out as its bytes."""
    target = b"/caf\xe9".decode("utf-8", "surrogateescape")
    head, _, _ = build_head("GET", target, "h", [], None)
    assert head.startswith(b"GET /caf\xe9 HTTP/1.1\r\n")


def test_header_values_go_out_as_the_bytes_the_caller_sent():
    """Values held as aiohttp's server decodes them (UTF-8, surrogateescape) are encoded
    back to the caller's bytes: UTF-8 as UTF-8, obs-text that is not UTF-8 byte for byte."""
    sent = [b"Caf\xe9 \xff", "Zo\u00eb \u00c5ngstr\u00f6m \u20ac".encode(), b"\x80\xc3"]
    headers = [(f"X-{i}", raw.decode("utf-8", "surrogateescape")) for i, raw in enumerate(sent)]
    head, _, _ = build_head("GET", "/", "h", headers, None)
    for index, raw in enumerate(sent):
        assert b"\r\nX-%d: %s\r\n" % (index, raw) in head


async def test_obs_text_request_headers_reach_the_peer_byte_for_byte(serve, clients):
    """Over a real socket: a raw peer receives exactly the bytes the caller's server read."""
    received: list[bytes] = []

    async def record(reader, writer, index):
        received.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    peer = await serve(record)
    client = clients(peer.url)
    value = b"Caf\xe9 Zo\xc3\xab \xff"
    resp = await client.request(
        "GET", "/", [("X-Name", value.decode("utf-8", "surrogateescape"))], **TIMEOUTS
    )
    assert resp.status == 204
    resp.release()
    assert b"\r\nX-Name: " + value + b"\r\n" in received[0]


def test_callers_framing_headers_never_produce_a_second_one():
    """Host and Transfer-Encoding from the caller are dropped; Connection too, its close
    honoured; a matching Content-Length is replaced by ours."""
    head, _, keep_alive = build_head(
        "POST",
        "/",
        "api",
        [
            ("Host", "evil"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "2"),
            ("Connection", "keep-alive, close"),
        ],
        b"ok",
    )
    assert lines(head) == [
        "POST / HTTP/1.1",
        "Host: api",
        "Content-Length: 2",
        "Connection: close",
        "",
        "ok"[:0],
    ]
    assert keep_alive is False


@pytest.mark.parametrize(
    ("method", "given", "body", "framing", "streamed"),
    [
        ("GET", [], None, None, 0),
        ("DELETE", [], None, None, 0),
        ("POST", [], None, "Content-Length: 0", 0),
        ("PATCH", [("Content-Length", "0")], None, "Content-Length: 0", 0),
        ("GET", [("Content-Length", "0")], None, "Content-Length: 0", 0),
        ("PUT", [], b"abc", "Content-Length: 3", 0),
        ("POST", [], "stream", "Transfer-Encoding: chunked", CHUNKED),
        ("POST", [("content-length", "7")], "stream", "Content-Length: 7", 7),
    ],
)
def test_exactly_one_framing_header(method, given, body, framing, streamed):
    """One framing header per body kind (none for a bodiless GET or DELETE)."""
    head, got_streamed, _ = build_head(method, "/", "h", given, body)
    framing_lines = [
        line for line in lines(head) if line.lower().startswith(("content-length", "transfer-"))
    ]
    assert framing_lines == ([framing] if framing else [])
    assert got_streamed == streamed


@pytest.mark.parametrize(
    ("method", "target", "headers", "body"),
    [
        ("GET", "/a\r\nX-Injected: 1", [], None),
        ("GET", "/a b", [], None),
        ("GET", "http://elsewhere/", [], None),
        ("GET", "*", [], None),
        ("GE T", "/", [], None),
        ("GET", "/", [("X-A", "1\r\nX-Injected: 1")], None),
        ("GET", "/", [("X-A", "1\nX-Injected: 1")], None),
        ("GET", "/", [("X-A", "1\rX")], None),
        ("GET", "/", [("X-A", "1\x00")], None),
        ("GET", "/", [("X-A: 1\r\nX-B", "2")], None),
        ("GET", "/", [("X A", "1")], None),
        ("GET", "/", [("X-A", "\ud800")], None),  # a surrogate that stands for no byte
        ("POST", "/", [("Content-Length", "3")], b"ab"),
        ("POST", "/", [("Content-Length", "3"), ("Content-Length", "4")], body()),
        ("POST", "/", [("Content-Length", "-1")], body()),
        ("POST", "/", [("Content-Length", "\u0663")], body()),
        ("GET", "/", [("Content-Length", "5")], None),
    ],
)
def test_requests_that_would_split_the_head_or_lie_about_length_are_refused(
    method, target, headers, body
):
    """Refused before anything is sent: InvalidRequest with sent=False."""
    with pytest.raises(InvalidRequest) as caught:
        build_head(method, target, "h", headers, body)
    assert caught.value.sent is False


@pytest.mark.parametrize(
    "names",
    [
        [""],
        ["X\nY"],  # two tokens around an LF: must not pass as two names
        ["\nX"],
        ["X\n"],
        ["Accept", "X-A\nX-B", "Accept-Encoding"],
        ["X:Y"],
        ["Zo\u00eb"],
        ["Accept", ""],
        ["X-A", "X A"],
    ],
)
def test_every_header_name_is_checked_as_a_token(names):
    """A forwarded header name that is not a token (empty, an LF inside, a colon, a space,
    non-ASCII), wherever it sits among good ones, is refused as such before anything is sent."""
    with pytest.raises(InvalidRequest, match="header name is not a token") as caught:
        build_head("GET", "/", "h", [(name, "1") for name in names], None)
    assert caught.value.sent is False


def test_header_names_with_every_token_character_pass():
    """All of RFC 9110's token characters are accepted in names, and the names leave as given."""
    names = ["!#$%&'*+-.^_`|~", "A0z9", "x", "X-Request-ID"]
    head, _, _ = build_head("GET", "/", "h", [(name, "v") for name in names], None)
    assert [line.split(": ")[0] for line in lines(head)[2:-2]] == names


def test_public_surface():
    """The names and signatures the proxy's wiring depends on."""
    assert set(gateway.http1.__all__) == {
        "BadResponse",
        "BodyTimeout",
        "CloseCause",
        "ConnectFailed",
        "ConnectTimeout",
        "ConnectionLost",
        "Http1Error",
        "InvalidRequest",
        "PoolStats",
        "ResponseTimeout",
        "UpstreamClient",
        "UpstreamResponse",
    }
    init = inspect.signature(UpstreamClient.__init__)
    assert list(init.parameters) == [
        "self",
        "base_url",
        "connect_timeout",
        "idle_timeout",
        "max_header_bytes",
        "ssl_context",
        "proxy_url",
    ]
    request = inspect.signature(UpstreamClient.request)
    assert list(request.parameters) == [
        "self",
        "method",
        "target",
        "headers",
        "body",
        "header_timeout",
        "read_timeout",
    ]
    for name in ("__aiter__", "read", "release", "close"):
        assert callable(getattr(UpstreamResponse, name))
    for error in (
        "ConnectFailed",
        "ConnectTimeout",
        "ConnectionLost",
        "ResponseTimeout",
        "BodyTimeout",
        "BadResponse",
        "InvalidRequest",
    ):
        assert issubclass(getattr(gateway.http1, error), gateway.http1.Http1Error)
