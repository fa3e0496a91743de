"""Case-insensitive route matching for the simulated API.

The EXACT API is ASP.NET, whose routing ignores case and tolerates a trailing slash (the PHP
client calls `/details` in lower case and `/Appointments/?from=…` with a slash). aiohttp's
router is case-sensitive, so the API is served by one catch-all route and this matcher.

The routes themselves (templates, scopes, minimum versions) come from the EXACT facts table,
`gateway.exact_api`. `{practiceId}` only matches a plain identifier, so anything else is
simply not a route (404); `{id}` matches any segment so that the endpoint itself can answer
400 for a malformed uuid, as the real API does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.exact_api import Route

__all__ = ["Match", "Route", "Router", "WrongMethod"]


@dataclass(frozen=True, slots=True)
class Match:
    """A route that matched, with its path parameters."""

    route: Route
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class WrongMethod:
    """The path exists but not for this method: the answer is 405 with `Allow`."""

    allowed: tuple[str, ...]


class Router:
    """Finds the route for a method and path."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes = tuple(routes)

    def match(self, method: str, path: str) -> Match | WrongMethod | None:
        """The matching route, `WrongMethod` if only the method is wrong, else None."""
        allowed: list[str] = []
        for route in self._routes:
            found = route.pattern.fullmatch(path)
            if found is None:
                continue
            if route.method == method:
                return Match(route, found.groupdict())
            allowed.append(route.method)
        return WrongMethod(tuple(allowed)) if allowed else None
