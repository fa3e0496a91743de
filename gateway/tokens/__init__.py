"""The shared bearer token: its schedule and the source that holds, refreshes and hands it out.

* :mod:`~gateway.tokens.schedule`: the pure values (when a token stops being usable, when to
  refresh, how long to back off; the token as held and as issued);
* :mod:`~gateway.tokens.source`: :class:`TokenSource`, the state that changes (single flight,
  401 replacement, failures) and the background loop that refreshes before expiry.

Both are plain Python with an injected clock (no aiohttp, no settings). Everything is
re-exported here: the rest of the gateway imports from ``gateway.tokens``.
"""

from __future__ import annotations

from gateway.tokens.schedule import (
    SAFETY_MARGIN_SECONDS,
    SHORT_LIFETIME_SECONDS,
    AccessToken,
    Grant,
    TokenPolicy,
    safety_margin,
)
from gateway.tokens.source import Identity, TokenListener, TokenSource

__all__ = [
    "SAFETY_MARGIN_SECONDS",
    "SHORT_LIFETIME_SECONDS",
    "AccessToken",
    "Grant",
    "Identity",
    "TokenListener",
    "TokenPolicy",
    "TokenSource",
    "safety_margin",
]
