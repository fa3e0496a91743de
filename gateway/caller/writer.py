"""Response heads written as the bytes EXACT sent: obs-text header values pass unaltered.

aiohttp decodes every header byte sequence that is not valid UTF-8 with ``surrogateescape``
(byte 0xE9 alone becomes U+DCE9), on the server and client side alike, so a header value in
the gateway is a string that stands for exact bytes. aiohttp's own head writer encodes UTF-8
and *silently drops* those escapes (its C writer skips surrogates), so EXACT's
``X-Name: Caf\\xe9`` would reach the caller as ``Caf``. :class:`CallerWriter` writes a head
holding such a value with ``surrogateescape``, restoring each original byte; heads that are
all ASCII (nearly all of them) still go through aiohttp's C writer, so the common case costs
one ``isascii()`` per field. The same rules as aiohttp's apply to the bytes: CR, LF and other
controls (except tab) are refused with ``ValueError`` (header injection), in either path.
"""

from __future__ import annotations

import re

from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict

# RFC 9110 section 5.5 and RFC 9112 section 4: controls other than HTAB never appear in a
# field line or status line (aiohttp's writer refuses the same set).
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def serialize_head(status_line: str, headers: CIMultiDict[str]) -> bytes:
    """A response head as bytes; each surrogate escape becomes the byte it stands for."""
    lines = [status_line]
    lines += (f"{name}: {value}" for name, value in headers.items())
    for line in lines:
        if _FORBIDDEN.search(line) is not None:
            raise ValueError("a control character in a response header (header injection)")
    # A lone surrogate outside U+DC80..U+DCFF stands for no byte: UnicodeEncodeError, which
    # is a ValueError like the refusal above.
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def _all_ascii(headers: CIMultiDict[str]) -> bool:
    return all(name.isascii() and value.isascii() for name, value in headers.items())


class CallerWriter(StreamWriter):
    """aiohttp's response writer, writing non-ASCII heads byte for byte (module docstring)."""

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        if _all_ascii(headers):
            await super().write_headers(status_line, headers)
            return
        if self._on_headers_sent is not None:
            await self._on_headers_sent(headers)
        # The same buffering as StreamWriter.write_headers: the head leaves with the first
        # body bytes (or at write_eof) in one segment.
        self._headers_buf = serialize_head(status_line, headers)
        self._headers_written = False
