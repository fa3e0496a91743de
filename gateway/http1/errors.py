"""The errors of the upstream HTTP/1.1 client: one small tree, nothing foreign leaks out.

Everything that can go wrong between asking for a response and reading its last body byte
is raised as one of these, whether it happens while connecting, while sending, while waiting
for the head or while iterating the body. OSError, ssl errors and httptools' parser errors
are translated where they happen (:mod:`gateway.http1.connection`,
:mod:`gateway.http1.tunnel`), so the layer above reasons about kinds, not libraries.

``sent`` answers the question a retry policy must ask: could any byte of this request have
reached the upstream? Only when it is False may a non-idempotent request be sent again.

::

    Http1Error                      kind            sent
    ├── ConnectFailed               connect_failed  False  DNS, refused, TLS, proxy refusal
    ├── ConnectTimeout              connect_timeout False  no connection within the time-out
    ├── ConnectionLost              connection_lost either the peer closed or reset it
    ├── ResponseTimeout             response_timeout True  no complete head in time
    ├── BodyTimeout                 body_timeout    True   the body stalled
    ├── BadResponse                 bad_response    True   unusable framing or protocol
    └── InvalidRequest              invalid_request either the caller's request cannot be sent
"""

from __future__ import annotations

from typing import ClassVar


class Http1Error(Exception):
    """Any failure of one exchange with the upstream."""

    kind: ClassVar[str] = "http1_error"

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class ConnectFailed(Http1Error):
    """No connection: name resolution, refusal, TLS handshake or the egress proxy said no."""

    kind = "connect_failed"

    def __init__(self, message: str) -> None:
        super().__init__(message, sent=False)


class ConnectTimeout(Http1Error):
    """The connection (TCP, proxy tunnel and TLS together) was not ready in time."""

    kind = "connect_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, sent=False)


class ConnectionLost(Http1Error):
    """The peer closed or reset the connection before the response was complete."""

    kind = "connection_lost"


class ResponseTimeout(Http1Error):
    """No complete response head arrived within the header time-out."""

    kind = "response_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, sent=True)


class BodyTimeout(Http1Error):
    """No body byte arrived for the read time-out while the caller was waiting for one."""

    kind = "body_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, sent=True)


class BadResponse(Http1Error):
    """The upstream's bytes are not a usable HTTP/1.1 response (framing or protocol)."""

    kind = "bad_response"

    def __init__(self, message: str) -> None:
        super().__init__(message, sent=True)


class InvalidRequest(Http1Error):
    """The caller's request cannot be sent safely (bytes that would split the head, a body
    that does not match its declared length). ``sent`` is True when part of it already left."""

    kind = "invalid_request"
