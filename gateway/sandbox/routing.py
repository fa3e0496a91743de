"""Case-insensitive route matching for the simulated API.

The EXACT API is ASP.NET, whose routing ignores case and tolerates a trailing slash (the PHP
client calls `/details` in lower case and `/Appointments/?from=…` with a slash). aiohttp's
router is case-sensitive, so the API is served by one catch-all route and this matcher.

`{practiceId}` only matches a plain identifier, so anything else is simply not a route (404);
`{id}` matches any segment so that the endpoint itself can answer 400 for a malformed uuid,
as the real API does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_PARAMETERS = {
    "practiceId": r"(?P<practiceId>[A-Za-z0-9][A-Za-z0-9_-]{0,63})",
    "id": r"(?P<id>[^/]+)",
}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, slots=True)
class Route:
    """One API operation: method, path template, and the scope it needs."""

    name: str
    method: str
    template: str
    scope: str


@dataclass(frozen=True, slots=True)
class Match:
    """A route that matched, with its path parameters."""

    route: Route
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class WrongMethod:
    """The path exists but not for this method: the answer is 405 with `Allow`."""

    allowed: tuple[str, ...]


def compile_template(template: str) -> re.Pattern[str]:
    """A case-insensitive regex for `template`, allowing one trailing slash."""
    parts = _PLACEHOLDER.split(template)
    pattern = "".join(
        _PARAMETERS[part] if i % 2 else re.escape(part) for i, part in enumerate(parts)
    )
    return re.compile(f"{pattern}/?", re.IGNORECASE)


class Router:
    """Finds the route for a method and path."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes = [(compile_template(r.template), r) for r in routes]

    def match(self, method: str, path: str) -> Match | WrongMethod | None:
        """The matching route, `WrongMethod` if only the method is wrong, else None."""
        allowed: list[str] = []
        for pattern, route in self._routes:
            found = pattern.fullmatch(path)
            if found is None:
                continue
            if route.method == method:
                return Match(route, found.groupdict())
            allowed.append(route.method)
        return WrongMethod(tuple(allowed)) if allowed else None
