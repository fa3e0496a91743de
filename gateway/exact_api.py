"""EXACT facts as data: its routes, their scopes and minimum EXACT versions, practice ids.

One table, read by the gateway (route labels, and the version admission that refuses a
request the practice's server would refuse anyway) and by the sandbox (which routes exist,
which scope each needs, which versions refuse them), so the two cannot drift apart. This
module imports nothing from the gateway and nothing outside the standard library, which is
why the sandbox may depend on it.

The facts, from the vendor's documentation and the one public client:

* every path starts with ``/v1``; the practice id is the path segment after
  ``/v1/Practices/``; the only practice-less operation is the subscriptions list, which the
  cloud answers itself;
* the whole API needs EXACT 13.842 or later at the practice; ``PATCH`` of an appointment
  needs 13.856 or later; no other per-route minimum is known;
* each operation needs one scope in the bearer token;
* ASP.NET routes match case-insensitively and tolerate one trailing slash.

EXACT versions (``pmsVersion`` in the practice details) look like ``13.856`` or
``13.842.1``; they compare numerically, component by component, and trailing zero
components do not count (``13.842.0`` is ``13.842``). Anything else is an unknown version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PRACTICE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
PRACTICE_ID = re.compile(PRACTICE_ID_PATTERN)

# Every scope the facts name, in the order the vendor's scope table lists them.
SCOPES: tuple[str, ...] = (
    "appointment.get",
    "appointment.update",
    "appointment.list",
    "practice.get",
    "productsubscription.get",
    "patient.list",
    "patient.get",
    "patient.get.contactdetails.phone",
    "patient.get.contactdetails.email",
    "patient.contact",
    "payor.list",
    "payor.get",
    "practitioner.list",
    "practitioner.get",
)

# ASCII digits only: `\d` would also accept other scripts' digits, which int() then reads.
_VERSION = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,3}")
_VERSION_MAX_LENGTH = 64


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """An EXACT version, ordered numerically by its components.

    ``parts`` has trailing zero components removed so that ``13.842`` == ``13.842.0``;
    ``text`` is the spelling it was parsed from, kept for messages and not compared.
    """

    parts: tuple[int, ...]
    text: str = field(compare=False)

    def __str__(self) -> str:
        return self.text


def parse_version(text: object) -> Version | None:
    """``"13.856"`` → ``Version((13, 856))``; anything that is not a dotted version → None.

    Surrounding whitespace is ignored; at most four components of at most nine digits each,
    so a hostile value cannot make a huge integer or a long string to carry around.
    """
    if not isinstance(text, str) or len(text) > _VERSION_MAX_LENGTH:
        return None
    stripped = text.strip()
    if _VERSION.fullmatch(stripped) is None:
        return None
    parts = [int(part) for part in stripped.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return Version(tuple(parts), stripped)


def _known_version(text: str) -> Version:
    version = parse_version(text)
    if version is None:  # pragma: no cover - a typo in the constants below
        raise ValueError(f"not a version: {text}")
    return version


API_MINIMUM_VERSION = _known_version("13.842")
"""The oldest EXACT at a practice that serves the API at all."""
PATCH_APPOINTMENT_MINIMUM_VERSION = _known_version("13.856")
"""The oldest EXACT at a practice that accepts ``PATCH`` of an appointment."""

_PARAMETERS = {
    "practiceId": f"(?P<practiceId>{PRACTICE_ID_PATTERN})",
    # Any one segment: the endpoint itself answers 400 for a malformed uuid.
    "id": r"(?P<id>[^/]+)",
}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def compile_template(template: str) -> re.Pattern[str]:
    """A case-insensitive regex for a path template, allowing one trailing slash."""
    pieces = _PLACEHOLDER.split(template)
    pattern = "".join(
        _PARAMETERS[piece] if index % 2 else re.escape(piece) for index, piece in enumerate(pieces)
    )
    return re.compile(f"{pattern}/?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Route:
    """One EXACT operation: its documented name, method, path template, scope and the
    oldest EXACT version that serves it (None for the practice-less operation)."""

    name: str
    method: str
    template: str
    scope: str
    minimum_version: Version | None
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", compile_template(self.template))

    @property
    def for_practice(self) -> bool:
        """Relayed to one practice's server (rather than answered by the cloud)."""
        return self.minimum_version is not None


_P = "/v1/Practices/{practiceId}"
_API = API_MINIMUM_VERSION

SUBSCRIPTIONS = Route(
    "ListActiveSubscriptions", "GET", "/v1/Subscriptions/active", "productsubscription.get", None
)
ROUTES: tuple[Route, ...] = (
    SUBSCRIPTIONS,
    Route("GetPracticeDetails", "GET", f"{_P}/details", "practice.get", _API),
    Route("GetAppointment", "GET", f"{_P}/Appointments/{{id}}", "appointment.get", _API),
    Route(
        "UpdateAppointment",
        "PATCH",
        f"{_P}/Appointments/{{id}}",
        "appointment.update",
        PATCH_APPOINTMENT_MINIMUM_VERSION,
    ),
    Route("GetAppointments", "GET", f"{_P}/Appointments", "appointment.list", _API),
    Route("ListPatients", "GET", f"{_P}/Patients", "patient.list", _API),
    Route("GetPatient", "GET", f"{_P}/Patients/{{id}}", "patient.get", _API),
    Route(
        "GetPatientContactDetails",
        "GET",
        f"{_P}/Patients/{{id}}/ContactDetails",
        "patient.get",
        _API,
    ),
    Route("ContactPatient", "POST", f"{_P}/Patients/{{id}}/Contact", "patient.contact", _API),
    Route("ListPayors", "GET", f"{_P}/Payors", "payor.list", _API),
    Route("GetPayor", "GET", f"{_P}/Payors/{{id}}", "payor.get", _API),
    Route("ListPractitioners", "GET", f"{_P}/Practitioners", "practitioner.list", _API),
    Route("GetPractitioner", "GET", f"{_P}/Practitioners/{{id}}", "practitioner.get", _API),
)
"""Every operation the facts name, the practice-less one first."""

_PRACTICE_PATH = re.compile(
    rf"/v1/Practices/{PRACTICE_ID_PATTERN}(?:/.*)?", re.IGNORECASE | re.DOTALL
)


def routes_for_path(path: str) -> tuple[Route, ...]:
    """Every route whose template matches ``path`` (a path without its query), any method."""
    return tuple(route for route in ROUTES if route.pattern.fullmatch(path))


def match_route(method: str, path: str) -> Route | None:
    """The route for this method and path, if the facts know one."""
    return next((r for r in routes_for_path(path) if r.method == method), None)


def _any_route() -> re.Pattern[str]:
    """Every route's pattern as one alternation, each alternative one capturing group (the
    routes' own named groups made anonymous), so one match says which route came first."""
    anonymous = re.compile(r"\(\?P<\w+>")
    return re.compile(
        "|".join(f"({anonymous.sub('(?:', r.pattern.pattern)})" for r in ROUTES), re.IGNORECASE
    )


_ANY_ROUTE = _any_route()


def route_template(path: str) -> str | None:
    """The template of the route ``path`` belongs to (whatever the method), else None.

    One regex match on every request's path instead of one per route (the first route that
    matches wins, as in :func:`routes_for_path`)."""
    found = _ANY_ROUTE.fullmatch(path)
    if found is None or found.lastindex is None:
        return None
    return ROUTES[found.lastindex - 1].template


# (method, template) -> minimum version: the per-request look-up, once the route's template
# is known (the proxy has it already), without matching the path again.
_MINIMUM_BY_TEMPLATE: dict[tuple[str, str], Version | None] = {
    (route.method, route.template): route.minimum_version for route in ROUTES
}


def practice_route_minimum(method: str, template: str) -> Version | None:
    """:func:`route_minimum_version` for a request under ``/v1/Practices/{id}`` whose route
    template is already known (``other`` for a path no route matches: the baseline)."""
    return _MINIMUM_BY_TEMPLATE.get((method, template), API_MINIMUM_VERSION)


def route_minimum_version(method: str, path: str) -> Version | None:
    """The oldest EXACT version at the practice that can serve ``method path``.

    A known route gives its own minimum; any other path under ``/v1/Practices/{id}`` still
    needs the API's baseline (the whole API needs it); a practice-less path gives None.
    """
    route = match_route(method, path)
    if route is not None:
        return route.minimum_version
    return API_MINIMUM_VERSION if _PRACTICE_PATH.fullmatch(path) else None
