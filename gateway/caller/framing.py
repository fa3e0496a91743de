"""How an answer is framed on the proxy port's wire: its head's bytes and its body's end.

A whole answer gets ``Content-Length``; a streamed one keeps EXACT's length, or is chunked
for an HTTP/1.1 caller and ends with the connection's close for an HTTP/1.0 one. HEAD, 204
and 304 answers never carry body bytes, and a 204 never a ``Content-Length`` (RFC 9110 8.6:
a client that believes one waits for bytes that never come; a 304's states the 200's length
and is kept). Heads are serialised byte for byte (obs-text values are restored from their
surrogate escapes) and refused with ``ValueError`` when a name or value holds a control
character other than tab (header injection). Pure: the connection adds its own fields
(``Date``, ``Connection``) and writes the bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus

from multidict import CIMultiDict

from gateway.caller.messages import Answer, IncomingRequest

# Statuses whose answers never carry a body, whatever their headers say (RFC 9110 6.4.1).
NO_BODY_STATUSES = frozenset({204, 304})

_PHRASES = {status.value: status.phrase for status in HTTPStatus}

# RFC 9110 section 5.5 and RFC 9112 section 4: controls other than HTAB (and the CR LF that
# end each line, counted separately) never appear in a status line or field line.
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def serialize_head(status: int, reason: str, headers: CIMultiDict[str], own: str) -> bytes:
    """A response head as bytes; each surrogate escape becomes the byte it stands for.

    ``own`` is the connection's and the framing's own fields, each ending in CR LF.
    """
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    head = f"HTTP/1.1 {status} {reason or _PHRASES.get(status, 'Unknown')}\r\n{fields}{own}\r\n"
    lines = len(headers) + own.count("\n") + 2
    if head.count("\n") != lines or head.count("\r") != lines or _CONTROLS.search(head):
        raise ValueError("a control character in a response header (header injection)")
    # A lone surrogate outside U+DC80..U+DCFF stands for no byte: UnicodeEncodeError, which
    # is a ValueError like the refusal above.
    return head.encode("utf-8", "surrogateescape")


def whole_answer(method: str, answer: Answer, own: str) -> bytes:
    """Head and body of a whole answer, ready for one write."""
    status = answer.status
    if status in NO_BODY_STATUSES or status < 200:
        return serialize_head(status, answer.reason, answer.headers, own)
    head = serialize_head(
        status, answer.reason, answer.headers, f"{own}Content-Length: {len(answer.body)}\r\n"
    )
    return head if method == "HEAD" or not answer.body else head + answer.body


@dataclass(frozen=True, slots=True)
class StreamFraming:
    """How a streamed answer's body is delimited."""

    headers: CIMultiDict[str]
    own: str  # the framing's own field, if any
    chunked: bool  # each write is a chunk; the end is the last chunk
    silent: bool  # HEAD, 204, 304: the head is the whole answer
    ends_with_close: bool  # an HTTP/1.0 caller reads the body to the close


def stream_framing(
    request: IncomingRequest, status: int, headers: CIMultiDict[str]
) -> StreamFraming:
    silent = request.method == "HEAD" or status in NO_BODY_STATUSES
    if status == 204 and "Content-Length" in headers:
        headers = headers.copy()
        del headers["Content-Length"]
    if silent or "Content-Length" in headers:
        return StreamFraming(headers, "", chunked=False, silent=silent, ends_with_close=False)
    if request.version == "1.1":
        return StreamFraming(
            headers,
            "Transfer-Encoding: chunked\r\n",
            chunked=True,
            silent=False,
            ends_with_close=False,
        )
    return StreamFraming(headers, "", chunked=False, silent=False, ends_with_close=True)
