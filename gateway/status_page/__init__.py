"""The status page on the admin port: what an on-call engineer needs at 3 a.m., on one screen.

``GET /`` is one self-contained HTML page (inline style and script, pinned by hashes in its
Content-Security-Policy, no external assets, charts drawn as inline SVG) that polls
``GET /status`` every 5 s. It answers "what changed, and when?": request rate, 5xx answers
split by who made them (the gateway or EXACT), 499s and p50/p99 latency over the last 15
minutes; the token's countdown and its last fetches; the EXACT breaker's last changes; the
practices failing now. Colours are the Okabe-Ito palette (told apart with the common colour
vision deficiencies) and every line also differs by dash pattern and is named in a legend.

:func:`status_document` builds ``/status`` from the token status, the breakers and the
:mod:`gateway.history`. Nothing in it is secret: no token, no secret, no client id, no path or
query string; practice ids only for breakers that are not closed, as in the metrics.

The rooms: :mod:`~gateway.status_page.document` (the data behind ``/status``),
:mod:`~gateway.status_page.page` (the HTML and its Content-Security-Policy) and
:mod:`~gateway.status_page.assets` (the inline stylesheet and script). Everything the admin
port uses is re-exported here.
"""

from __future__ import annotations

from gateway.status_page.document import PRACTICES_SHOWN, status_document
from gateway.status_page.page import CONTENT_SECURITY_POLICY, PAGE

__all__ = ["CONTENT_SECURITY_POLICY", "PAGE", "PRACTICES_SHOWN", "status_document"]
