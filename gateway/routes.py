"""The request target: what may be forwarded, which practice it is for, and its route label.

Pure functions over the raw request target (no aiohttp). The gateway must not be an open
proxy: only origin-form targets (``/path?query``) are forwarded, always to the configured API
host, and a target that could climb out of its path (dot-segments, plain or percent-encoded,
or backslashes that IIS-style servers treat as slashes) is refused before anything is sent.

The route *template* is the metric and log label: it comes from the table of EXACT routes in
:mod:`gateway.exact_api`, never from the caller's path, so labels stay bounded and carry no
patient or appointment id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.errors import BadRequest
from gateway.exact_api import PRACTICE_ID, route_template

OTHER_ROUTE = "other"
# Methods a caller may send that we label by name; anything else is counted as "other" so a
# caller cannot mint metric series by inventing methods.
KNOWN_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})

_PRACTICES_PREFIX = re.compile(r"/v1/practices/", re.IGNORECASE)
_DOT_SEGMENT = re.compile(r"^(?:\.|%2e){1,2}$", re.IGNORECASE)
_SEGMENT_SPLIT = re.compile(r"/|\\|%2f|%5c", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Target:
    """A request target that passed the guard."""

    path: str  # raw path and query, exactly as the caller sent them
    practice_id: str | None
    route: str  # template from the table, or "other"


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def parse_target(method: str, raw_target: str) -> Target:
    """Check a raw request target and classify it, or raise :class:`BadRequest`."""
    if method == "CONNECT":
        raise BadRequest("CONNECT is not supported: the gateway is not a forward proxy")
    if not raw_target.startswith("/"):
        # Absolute-form (http://host/...), authority-form and asterisk-form targets would let
        # a caller choose the host; only origin-form paths are forwarded to the API.
        raise BadRequest("only origin-form request targets (/path?query) are accepted")
    path = raw_target.split("?", 1)[0].split("#", 1)[0]
    if any(_DOT_SEGMENT.match(segment) for segment in _SEGMENT_SPLIT.split(path)):
        raise BadRequest("dot-segments (. or ..) are not allowed in the path")

    match = _PRACTICES_PREFIX.match(path)
    if match is None:
        return Target(raw_target, None, route_template(path) or OTHER_ROUTE)
    rest = path[match.end() :]
    practice_id = rest.partition("/")[0]
    if not PRACTICE_ID.fullmatch(practice_id):
        raise BadRequest(
            "the practice id must be 1-64 letters, digits, '-' or '_', starting with a"
            " letter or digit"
        )
    return Target(raw_target, practice_id, route_template(path) or OTHER_ROUTE)
