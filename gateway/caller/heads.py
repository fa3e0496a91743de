"""Requests as their bytes arrive on the proxy port: parsed by llhttp, bounded, handed over.

:class:`HeadReader` feeds a connection's bytes to httptools (llhttp in strict mode: no
request smuggling through ambiguous framing) and turns each message into an
:class:`~gateway.caller.messages.IncomingRequest` for its connection. It bounds a head while
it arrives, before llhttp holds more of it: the target to ``max_target_bytes`` (414), each
field to ``MAX_FIELD_BYTES`` and their number to ``MAX_HEADERS`` (431), and the whole head to
``max_head_bytes`` (431). It refuses framing llhttp would accept but the gateway cannot pass
on unchanged: a transfer coding other than chunked alone, any in HTTP/1.0, and an upgrade or
CONNECT request with a body (llhttp never hands that body over).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.caller.limits import MAX_FIELD_BYTES, MAX_HEADERS, CallerLimits
from gateway.caller.messages import IncomingRequest
from gateway.errors import BadRequest, GatewayError, RequestHeaderFieldsTooLarge, UriTooLong

if TYPE_CHECKING:
    from gateway.caller.http11 import ProxyConnection


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing: the head is refused."""


class HeadReader:
    """One connection's request parser (module docstring).

    The connection hears :meth:`ProxyConnection.head_ready` when a head is complete and
    :meth:`ProxyConnection.message_done` when its body is; body bytes go straight to the
    request's :class:`~gateway.caller.messages.RequestBody`.
    """

    __slots__ = (
        "_began_now",
        "_conn",
        "_ended_now",
        "_field_bytes",
        "_fields",
        "_head_bytes",
        "_limits",
        "_parser",
        "_refusal",
        "_url",
        "_url_bytes",
        "in_head",
        "parsing",
    )

    def __init__(self, conn: ProxyConnection, limits: CallerLimits) -> None:
        self._conn = conn
        self._limits = limits
        self._parser = httptools.HttpRequestParser(self)
        self.in_head = False  # a head has begun and is not complete
        self.parsing: IncomingRequest | None = None  # the request whose body is arriving
        self._began_now = False
        self._ended_now = False
        self._head_bytes = 0
        self._url: list[bytes] = []
        self._url_bytes = 0
        self._fields: list[tuple[str, str]] = []
        self._field_bytes = 0
        self._refusal: GatewayError | None = None

    def feed(self, data: bytes) -> GatewayError | None:
        """Parse ``data``; the error that ends the connection's parsing, if one does.

        Raises ``httptools.HttpParserUpgrade`` after the head of a CONNECT or upgrade
        request: nothing after it can be read as HTTP.
        """
        self._began_now = self._ended_now = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise
        except httptools.HttpParserError:
            refusal, self._refusal = self._refusal, None
            return refusal or BadRequest("the request is not valid HTTP/1.1")
        if self.in_head and not (self._began_now and self._ended_now):
            # A head still arriving: every byte of this segment belongs to it, unless the
            # previous message ended in this segment too (pipelined): that segment is not
            # counted, and the exact size is checked when the head completes.
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.max_head_bytes:
                return self._head_too_large()
        return None

    def _head_too_large(self) -> GatewayError:
        return RequestHeaderFieldsTooLarge(
            f"the request head is larger than {self._limits.max_head_bytes} bytes"
        )

    def _refuse(self, error: GatewayError) -> None:
        self._refusal = error
        raise _Refused

    # httptools callbacks (names fixed by httptools).

    def on_message_begin(self) -> None:
        self.in_head = True
        self._began_now = True
        self._url = []
        self._url_bytes = 0
        self._fields = []
        self._field_bytes = 0

    def on_url(self, piece: bytes) -> None:
        self._url.append(piece)
        self._url_bytes += len(piece)
        if self._url_bytes > self._limits.max_target_bytes:
            self._refuse(
                UriTooLong(
                    f"the request target is longer than {self._limits.max_target_bytes} bytes"
                )
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) + 2 > MAX_FIELD_BYTES:
            self._refuse(
                RequestHeaderFieldsTooLarge(
                    f"a header field is longer than {MAX_FIELD_BYTES} bytes"
                )
            )
        if len(self._fields) >= MAX_HEADERS:
            self._refuse(RequestHeaderFieldsTooLarge(f"more than {MAX_HEADERS} header fields"))
        self._field_bytes += len(name) + len(value) + 4
        # Names are tokens (the parser checks); values keep any byte by surrogate escapes.
        self._fields.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._head_bytes = 0
        if self._url_bytes + self._field_bytes > self._limits.max_head_bytes:
            self._refuse(self._head_too_large())
        parser = self._parser
        headers = CIMultiDictProxy(CIMultiDict(self._fields))
        length = headers.get("Content-Length")
        encoding = headers.get("Transfer-Encoding")
        version = parser.get_http_version()
        if version not in {"1.0", "1.1"}:
            # llhttp reads "HTTP/2.0" (or 0.9) on a request line too; passed on, it would be
            # spoken to EXACT as 1.1 on the caller's word that it means something else.
            self._refuse(BadRequest("only HTTP/1.0 and HTTP/1.1 are spoken here"))
        if encoding is not None and (encoding.lower() != "chunked" or version != "1.1"):
            # llhttp takes any coding list that ends in chunked, and chunked in HTTP/1.0.
            # Only chunked alone is ours to undo: "gzip, chunked" would reach EXACT as gzip
            # bytes it was never told about; and a 1.0 message with Transfer-Encoding is
            # faulty framing that a 1.0 hop reads as a body-less request (RFC 9112 6.1).
            self._refuse(BadRequest("only Transfer-Encoding: chunked in HTTP/1.1 is accepted"))
        if parser.should_upgrade() and (encoding is not None or int(length or 0) > 0):
            # The parser hands over nothing after the head of an upgrade (or CONNECT)
            # request, not even its body: forwarded, EXACT would get it without its body.
            self._refuse(BadRequest("a request asking for an upgrade may not carry a body"))
        request = IncomingRequest(
            self._conn,
            parser.get_method().decode("ascii"),
            b"".join(self._url).decode("utf-8", "surrogateescape"),
            version,
            headers,
            int(length) if length is not None and encoding is None else None,
            encoding is not None,
            parser.should_keep_alive(),
        )
        if not self._conn.head_ready(request):
            raise _Refused  # the connection takes no more: stop parsing here
        self.parsing = request

    def on_body(self, data: bytes) -> None:
        request = self.parsing
        if request is not None and request.body is not None:
            request.body.feed(data)

    def on_message_complete(self) -> None:
        self._ended_now = True
        request, self.parsing = self.parsing, None
        if request is not None:
            if request.body is not None:
                request.body.feed_eof()
            self._conn.message_done(request)
