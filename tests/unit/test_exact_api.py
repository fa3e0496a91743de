"""The EXACT facts table: routes, scopes, minimum versions, and the version comparator."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gateway import exact_api
from gateway.exact_api import (
    API_MINIMUM_VERSION,
    PATCH_APPOINTMENT_MINIMUM_VERSION,
    PRACTICE_ID,
    ROUTES,
    SCOPES,
    SUBSCRIPTIONS,
    Version,
    match_route,
    parse_version,
    route_minimum_version,
    route_template,
    routes_for_path,
)

APPOINTMENT = "/v1/Practices/UKTEST1/Appointments/66c12476-83ff-4329-886c-15ab6fc83bea"


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("13.856", (13, 856)),
        ("13.842.1", (13, 842, 1)),
        (" 13.860 ", (13, 860)),
        ("13.842.0", (13, 842)),
        ("13.0.0.0", (13,)),
        ("0", (0,)),
        ("14", (14,)),
        ("013.0856", (13, 856)),
        ("1.2.3.4", (1, 2, 3, 4)),
    ],
)
def test_versions_parse_to_numeric_components(text: str, parts: tuple[int, ...]) -> None:
    """Dotted versions parse to their numbers; trailing zero components do not count."""
    version = parse_version(text)
    assert version is not None
    assert version.parts == parts
    assert str(version) == text.strip()


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "13.",
        ".856",
        "13..856",
        "13.856-beta",
        "v13.856",
        "EXACT v13.860",
        "1.2.3.4.5",
        "1" * 10,
        "13.٨٥٦",  # Arabic-Indic digits: int() would read them, a version must not
        "13.856\x00",
        "9" * 100,
        None,
        13.856,
        ["13", "856"],
    ],
)
def test_anything_else_is_an_unknown_version(text: object) -> None:
    """Malformed, hostile or non-string values are unknown (None), never an exception."""
    assert parse_version(text) is None


def _v(text: str) -> Version:
    version = parse_version(text)
    assert version is not None
    return version


def test_versions_compare_numerically_not_as_text() -> None:
    """13.1000 > 13.856 > 13.842.1 > 13.842 == 13.842.0 > 13.9; equal versions hash alike."""
    assert _v("13.1000") > _v("13.856") > _v("13.842.1") > _v("13.842") > _v("13.9")
    assert _v("13.842") == _v("13.842.0") == API_MINIMUM_VERSION
    assert len({_v("13.842"), _v("13.842.0"), _v(" 13.842")}) == 1
    assert _v("13.855.999") < PATCH_APPOINTMENT_MINIMUM_VERSION <= _v("13.856.0")
    assert _v("14") > _v("13.999.999")


@pytest.mark.parametrize(
    ("method", "path", "minimum"),
    [
        ("PATCH", APPOINTMENT, "13.856"),
        ("PATCH", APPOINTMENT.lower() + "/", "13.856"),
        ("GET", APPOINTMENT, "13.842"),
        ("GET", "/v1/Practices/UKTEST1/details", "13.842"),
        ("POST", "/v1/Practices/UKTEST1/Patients/x/Contact", "13.842"),
        # Unknown operations on a practice still need the API at all.
        ("DELETE", APPOINTMENT, "13.842"),
        ("GET", "/v1/Practices/UKTEST1/Treatments", "13.842"),
        ("GET", "/v1/Practices/UKTEST1", "13.842"),
        ("GET", "/v1/Subscriptions/active", None),
        ("GET", "/v1/Other", None),
        ("GET", "/v1/Practices/-bad/details", None),
        ("GET", "/v1/Practices/", None),
    ],
)
def test_route_minimum_version(method: str, path: str, minimum: str | None) -> None:
    """PATCH appointment needs 13.856, everything else at a practice 13.842, and a path with
    no practice has no minimum."""
    expected = None if minimum is None else _v(minimum)
    assert route_minimum_version(method, path) == expected


def test_every_documented_operation_is_in_the_table() -> None:
    """13 operations, unique (method, template), each with a known scope; only the
    subscriptions list is practice-less."""
    assert len(ROUTES) == 13
    assert len({(r.method, r.template) for r in ROUTES}) == 13
    assert len({r.name for r in ROUTES}) == 13
    assert all(r.scope in SCOPES for r in ROUTES)
    assert [r for r in ROUTES if not r.for_practice] == [SUBSCRIPTIONS]
    assert len(SCOPES) == len(set(SCOPES)) == 14
    patch = match_route("PATCH", APPOINTMENT)
    assert patch is not None
    assert (patch.name, patch.scope) == ("UpdateAppointment", "appointment.update")


def test_route_templates_match_like_aspnet() -> None:
    """Any case and one trailing slash; not two slashes, extra segments, or a bad id."""
    assert route_template("/V1/PRACTICES/uktest1/DETAILS/") == "/v1/Practices/{practiceId}/details"
    assert route_template("/v1/Practices/UKTEST1/Patients/p/Contact") == (
        "/v1/Practices/{practiceId}/Patients/{id}/Contact"
    )
    for path in (
        "/v1/Practices/UKTEST1/details//",
        "/v1/Practices/UKTEST1/details/extra",
        "/v1/Practices/UK%2FX/details",
        "/v1/Practices/" + "A" * 65 + "/details",
    ):
        assert route_template(path) is None, path
    assert match_route("GET", "/v1/Subscriptions/active") is SUBSCRIPTIONS
    assert match_route("POST", "/v1/Subscriptions/active") is None


def test_practice_id_pattern() -> None:
    """1-64 letters, digits, '-' or '_', starting with a letter or digit; ASCII only."""
    for good in ("UKTEST1", "a", "UK_A-1", "A" * 64):
        assert PRACTICE_ID.fullmatch(good)
    for bad in ("", "-x", "_x", "A" * 65, "UK TEST", "UK.1", "ÜK1", "UK1\n"):
        assert not PRACTICE_ID.fullmatch(bad), bad


def test_the_facts_module_depends_on_nothing_of_ours() -> None:
    """The sandbox may import it, so it must import only the standard library."""
    tree = ast.parse(Path(exact_api.__file__).read_text())
    nodes = list(ast.walk(tree))
    imported = {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names} | {
        n.module for n in nodes if isinstance(n, ast.ImportFrom)
    }
    assert imported <= {"__future__", "re", "dataclasses"}


def test_route_template_agrees_with_the_route_table_for_every_template() -> None:
    """The single alternation finds the same (first) route as matching route by route."""
    paths = [
        t.replace("{practiceId}", "UKTEST1").replace("{id}", "x-1") + suffix
        for t in (r.template for r in ROUTES)
        for suffix in ("", "/", "/more")
    ]
    paths += ["/", "/v1", "/v1/Practices/UKTEST1", "/V1/SUBSCRIPTIONS/ACTIVE"]
    for path in paths:
        found = routes_for_path(path)
        assert route_template(path) == (found[0].template if found else None), path
