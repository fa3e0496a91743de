"""The request target: what may be forwarded, which practice it is for, and its route label.

Pure functions over the raw request target (no aiohttp). The gateway must not be an open
proxy: only origin-form targets (``/path?query``) are forwarded, always to the configured API
host, and a target that could climb out of its path (dot-segments, plain or percent-encoded,
or backslashes that IIS-style servers treat as slashes) is refused before anything is sent.

The practice a request is for must be the practice EXACT will route it to. ASP.NET routing
decodes percent-encoded characters and collapses empty segments, so ``/v1/%50ractices/X`` and
``//v1/Practices/X`` reach practice X there; if the gateway read them differently they would
skip X's breaker and concurrency limit. Rather than re-implement ASP.NET's normalisation, only
the canonical spelling is accepted: a path with a percent-encoded unreserved character
(RFC 3986 section 6.2.2.2 says those must be decoded), an encoded slash or backslash, IIS's
``%uXXXX`` form, a malformed escape, a backslash, an empty segment or a ``;`` parameter is
refused with 400.

The route *template* is the metric and log label: it comes from the table of EXACT routes in
:mod:`gateway.exact_api`, never from the caller's path, so labels stay bounded and carry no
patient or appointment id.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from gateway.errors import ALLOWED_METHODS, BadRequest, MethodNotAllowed
from gateway.exact_api import PRACTICE_ID, route_template

OTHER_ROUTE = "other"
# Methods a caller may send that we label by name; anything else is counted as "other" so a
# caller cannot mint metric series by inventing methods.
KNOWN_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})

_PRACTICES_PREFIX = re.compile(r"/v1/practices/", re.IGNORECASE)
_DOT_SEGMENT = re.compile(r"^(?:\.|%2e){1,2}$", re.IGNORECASE)
_SEGMENT_SPLIT = re.compile(r"/|\\|%2f|%5c", re.IGNORECASE)
# Percent-escapes of unreserved characters (ALPHA DIGIT - . _ ~), of / and \, IIS's %u form,
# and a % that does not start a valid escape: all spell a path EXACT would read differently.
_NON_CANONICAL_ESCAPE = re.compile(
    r"%(?:[46][1-9a-f]|[57][0-9a]|3[0-9]|2d|2e|5f|7e|2f|5c|u|(?![0-9a-f]{2}))", re.IGNORECASE
)
_ALLOWED = frozenset(ALLOWED_METHODS)


class Target(NamedTuple):
    """A request target that passed the guard (a named tuple: immutable, and cheaper to make
    than a frozen dataclass on every request)."""

    path: str  # raw path and query, exactly as the caller sent them
    practice_id: str | None
    route: str  # template from the table, or "other"


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def check_method(method: str) -> None:
    """Refuse a method outside the allow-list (405), and CONNECT with 400 as the contract says."""
    if method == "CONNECT":
        raise BadRequest("CONNECT is not supported: the gateway is not a forward proxy")
    if method not in _ALLOWED:
        raise MethodNotAllowed(f"only {', '.join(ALLOWED_METHODS)} are forwarded to the EXACT API")


def check_canonical(path: str) -> None:
    """Refuse a path EXACT would route differently from how it reads here (module docstring)."""
    if (
        "." not in path
        and "%" not in path
        and "\\" not in path
        and ";" not in path
        and "//" not in path
    ):
        # Every rule below needs one of these: a dot-segment a '.' or '%2e', an escape a
        # '%'. Most paths have none, and five C scans are a fraction of the regexes' cost.
        return
    _check_canonical_rules(path)


def _check_canonical_rules(path: str) -> None:
    """The rules of :func:`check_canonical`, without its shortcut for plain paths."""
    if any(_DOT_SEGMENT.match(segment) for segment in _SEGMENT_SPLIT.split(path)):
        raise BadRequest("dot-segments (. or ..) are not allowed in the path")
    if _NON_CANONICAL_ESCAPE.search(path):
        raise BadRequest(
            "the path must be written canonically: no percent-encoded letters, digits,"
            " '-', '.', '_', '~', '/' or '\\', and no malformed escapes"
        )
    if "\\" in path:
        raise BadRequest("the path must not contain backslashes (IIS reads them as '/')")
    if "//" in path:
        raise BadRequest("the path must not contain empty segments (//)")
    if ";" in path:
        raise BadRequest("the path must not contain ';' parameters")


def parse_target(method: str, raw_target: str) -> Target:
    """Check a method and raw request target and classify them, or raise the 400/405."""
    check_method(method)
    if not raw_target.startswith("/"):
        # Absolute-form (http://host/...), authority-form and asterisk-form targets would let
        # a caller choose the host; only origin-form paths are forwarded to the API.
        raise BadRequest("only origin-form request targets (/path?query) are accepted")
    path = raw_target.partition("?")[0].partition("#")[0]
    check_canonical(path)

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
