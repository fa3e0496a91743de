"""Pages cut by response size, chained by signed continuation tokens.

The EXACT docs say appointment lists are split into pages by response size and that a
continuation token fetches the rest; the body is a bare JSON array, so the token travels in a
`continuationToken` response header (an assumption, see docs/exact-facts.md §2.1).

The token is a keyset cursor (start instant and id of the last record sent), signed with HMAC
over the cursor *and* the query it belongs to: a token is refused (400) if it was garbled,
forged, or replayed against another practice or other filters. Keyset paging keeps every
record on exactly one page even when records are edited between pages, as long as the edit
does not move a record across the cursor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
Cursor = tuple[float, str]

_SIGNATURE_BYTES = 16


class ContinuationError(ValueError):
    """A continuation token that cannot be honoured."""


class ContinuationCodec:
    """Encodes cursors into opaque tokens bound to one query, and back."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def encode(self, query_scope: str, cursor: Cursor) -> str:
        """An opaque token for `cursor`, valid only with the same `query_scope`."""
        payload = json.dumps([cursor[0], cursor[1]], separators=(",", ":")).encode()
        signature = self._sign(query_scope, payload)
        return f"{_b64(payload)}.{_b64(signature)}"

    def decode(self, query_scope: str, token: str) -> Cursor:
        """The cursor inside `token`, or `ContinuationError` if it is not one of ours."""
        try:
            payload_b64, signature_b64 = token.split(".")
            payload = _unb64(payload_b64)
            signature = _unb64(signature_b64)
        except (ValueError, binascii.Error) as exc:
            raise ContinuationError("The continuationToken is malformed") from exc
        if not hmac.compare_digest(signature, self._sign(query_scope, payload)):
            raise ContinuationError("The continuationToken is not valid for this query")
        start, record_id = json.loads(payload)
        return (float(start), str(record_id))

    def _sign(self, query_scope: str, payload: bytes) -> bytes:
        message = query_scope.encode() + b"\x00" + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_SIGNATURE_BYTES]


def take_page(items: Iterable[T], size_of: Callable[[T], int], budget: int) -> tuple[list[T], bool]:
    """Take items while the JSON array of them fits `budget` bytes; say whether more remain.

    A page always holds at least one item, so a record larger than the budget cannot stall
    the walk.
    """
    page: list[T] = []
    used = 2  # the enclosing brackets
    for item in items:
        size = size_of(item) + (1 if page else 0)  # the separating comma
        if page and used + size > budget:
            return page, True
        page.append(item)
        used += size
    return page, False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
