"""Request serialisation: one HTTP/1.1 request head, built with one join, framed by us alone.

The client owns the request's framing. Whatever the caller put in its header list, exactly
one framing header leaves: ``Content-Length`` for a bytes body (and for a bodiless POST, PUT
or PATCH), the caller's ``Content-Length`` for a streamed body that declared one, otherwise
``Transfer-Encoding: chunked``. A second or conflicting framing header is how request
smuggling starts, so the caller's framing headers are handled here, and only here:

- ``Host``: dropped; the client sends the one from its base URL.
- ``Transfer-Encoding``: dropped; the client chooses the framing.
- ``Connection``: dropped; if one of its tokens is ``close`` the client sends
  ``Connection: close`` and the connection is not reused.
- ``Content-Length``: checked against the body: all values must agree, and a bytes body or a
  missing body must match it, else :class:`InvalidRequest`. For a streamed body it selects
  fixed-length streaming (the body must then yield exactly that many bytes).

Bytes that would split the head (CR, LF, NUL anywhere, controls or spaces in the target, a
header name that is not a token) are refused with :class:`InvalidRequest` before anything is
sent. The target and every header value are sent byte for byte: the gateway's strings are
the caller's bytes decoded as UTF-8 with ``surrogateescape`` (what aiohttp's server does), so
they are encoded back the same way: valid UTF-8 (``Zoë``) and obs-text that is not UTF-8
(``Caf\\xe9``, held as ``Caf\\udce9``) both leave as the bytes that arrived. A string that
stands for no bytes (a lone surrogate outside U+DC80..U+DCFF) is :class:`InvalidRequest`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.http1.errors import InvalidRequest

# RFC 9110 section 5.6.2: a header name (and a method) is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Every forwarded header name at once, joined by LF (never part of a token): one match per
# request instead of one per name.
_TOKEN_LINES = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*")
# Origin-form: starts with "/", no whitespace or controls (they would end the request line).
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# RFC 9110 section 8.6: a user agent should send Content-Length: 0 for these without a body.
_BODY_EXPECTED = frozenset({"POST", "PUT", "PATCH"})
_OWNED = frozenset({"host", "transfer-encoding", "connection", "content-length"})

# How a streamed body is framed: a declared length, or chunked.
CHUNKED = -1


def host_header(host: str, port: int, default_port: int) -> str:
    """The ``Host`` value for a base URL: brackets for IPv6 literals, the port when unusual."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port == default_port else f"{shown}:{port}"


def _declared_length(values: list[str]) -> int:
    first = values[0].strip()
    if not (first.isascii() and first.isdigit()) or any(v.strip() != first for v in values):
        raise InvalidRequest("the request's Content-Length is invalid or repeated", sent=False)
    return int(first)


def _caller_headers(
    headers: Sequence[tuple[str, str]], lines: list[str]
) -> tuple[int, list[str], bool]:
    """Append the caller's headers except the framing ones; returns the lines added, the
    caller's Content-Length values and whether it allows keep-alive."""
    names: list[str] = []
    lengths: list[str] = []
    keep_alive = True
    for name, value in headers:
        lower = name.lower()
        if lower in _OWNED:
            if lower == "content-length":
                lengths.append(value)
            elif lower == "connection" and any(
                token.strip().lower() == "close" for token in value.split(",")
            ):
                keep_alive = False
            continue
        names.append(name)
        lines += (name, ": ", value, "\r\n")
    if names:
        joined = "\n".join(names)
        # The count catches a name that holds an LF itself (two tokens would match).
        if not _TOKEN_LINES.fullmatch(joined) or joined.count("\n") != len(names) - 1:
            raise InvalidRequest("a request header name is not a token", sent=False)
    return len(names), lengths, keep_alive


def _framing(method: str, body: object, declared: int | None, lines: list[str]) -> int:
    """Append the one framing header; returns the streamed body's framing (0 if not streamed)."""
    if body is None:
        if declared:
            raise InvalidRequest("Content-Length given for a request without body", sent=False)
        if declared == 0 or method in _BODY_EXPECTED:
            lines.append("Content-Length: 0\r\n")
        return 0
    if isinstance(body, bytes):
        if declared is not None and declared != len(body):
            raise InvalidRequest("Content-Length does not match the request body", sent=False)
        lines += ("Content-Length: ", str(len(body)), "\r\n")
        return 0
    if declared is not None:
        lines += ("Content-Length: ", str(declared), "\r\n")
        return declared
    lines.append("Transfer-Encoding: chunked\r\n")
    return CHUNKED


def build_head(
    method: str,
    target: str,
    host: str,
    headers: Sequence[tuple[str, str]],
    body: object,
) -> tuple[bytes, int, bool]:
    """Serialise a request head.

    ``body`` is ``None``, ``bytes``, or anything else (a streamed body). Returns the head,
    the streamed body's framing (its declared length, or :data:`CHUNKED`; 0 when the body is
    not streamed) and whether the connection may be kept alive afterwards.
    """
    if method not in _KNOWN_METHODS and not _TOKEN.fullmatch(method):
        raise InvalidRequest("the request method is not a token", sent=False)
    if not target.startswith("/") or _BAD_TARGET.search(target):
        raise InvalidRequest("the request target is not a clean origin-form target", sent=False)
    lines = ["Host: ", host, "\r\n"]
    added, lengths, keep_alive = _caller_headers(headers, lines)
    declared = _declared_length(lengths) if lengths else None
    before = len(lines)
    streamed = _framing(method, body, declared, lines)
    # Host, each caller line, the framing line if any, Connection: close if any, the blank.
    breaks = 2 + added + (len(lines) != before) + (not keep_alive)
    if not keep_alive:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    text = "".join(lines)
    # One scan instead of one per value: a CR, LF or NUL the caller smuggled into a value
    # shows up as a surplus line break (or a NUL) in the joined head.
    if text.count("\n") != breaks or text.count("\r") != breaks or "\x00" in text:
        raise InvalidRequest("a request header value holds CR, LF or NUL", sent=False)
    try:
        return (
            b"".join(
                (
                    method.encode("ascii"),
                    b" ",
                    target.encode("utf-8", "surrogateescape"),
                    b" HTTP/1.1\r\n",
                    text.encode("utf-8", "surrogateescape"),
                )
            ),
            streamed,
            keep_alive,
        )
    except UnicodeEncodeError:
        raise InvalidRequest(
            "a request header holds a character that stands for no bytes", sent=False
        ) from None
