"""The target guard and route templates, as pure functions."""

from __future__ import annotations

import random

import pytest

from gateway.errors import BadRequest
from gateway.routes import (
    OTHER_ROUTE,
    _check_canonical_rules,
    check_canonical,
    method_label,
    parse_target,
)


@pytest.mark.parametrize(
    ("target", "practice", "route"),
    [
        ("/v1/Subscriptions/active", None, "/v1/Subscriptions/active"),
        ("/V1/SUBSCRIPTIONS/ACTIVE/", None, "/v1/Subscriptions/active"),
        ("/v1/Practices/UKTEST1/details", "UKTEST1", "/v1/Practices/{practiceId}/details"),
        ("/v1/practices/uktest1/Details", "uktest1", "/v1/Practices/{practiceId}/details"),
        (
            "/v1/Practices/UKTEST1/Appointments/?from=2024-01-01T00:00:00Z",
            "UKTEST1",
            "/v1/Practices/{practiceId}/Appointments",
        ),
        (
            "/v1/Practices/WFEVAL/Appointments/66C12476-83FF-4329-886C-15AB6FC83BEA",
            "WFEVAL",
            "/v1/Practices/{practiceId}/Appointments/{id}",
        ),
        (
            "/v1/Practices/UK_A-1/Patients/000005ff-1300-0000-0000-008034ec7256/ContactDetails",
            "UK_A-1",
            "/v1/Practices/{practiceId}/Patients/{id}/ContactDetails",
        ),
        (
            "/v1/Practices/UKTEST1/Patients/x/Contact",
            "UKTEST1",
            "/v1/Practices/{practiceId}/Patients/{id}/Contact",
        ),
        ("/v1/Practices/UKTEST1/Payors", "UKTEST1", "/v1/Practices/{practiceId}/Payors"),
        ("/v1/Practices/UKTEST1/Payors/p", "UKTEST1", "/v1/Practices/{practiceId}/Payors/{id}"),
        (
            "/v1/Practices/UKTEST1/Practitioners/p",
            "UKTEST1",
            "/v1/Practices/{practiceId}/Practitioners/{id}",
        ),
        ("/v1/Practices/UKTEST1/Unknown/thing", "UKTEST1", OTHER_ROUTE),
        ("/v1/Practices/UKTEST1", "UKTEST1", OTHER_ROUTE),
        ("/v1/Patients/123-456?name=Smith", None, OTHER_ROUTE),
        ("/", None, OTHER_ROUTE),
    ],
)
def test_practice_and_route_template(target: str, practice: str | None, route: str) -> None:
    """Practice id is the segment after /v1/Practices/; labels come from the fixed table."""
    parsed = parse_target("GET", target)
    assert parsed.practice_id == practice
    assert parsed.route == route
    assert parsed.path == target


def test_route_label_never_contains_caller_data() -> None:
    """Ids and query strings in the path never leak into the route label."""
    parsed = parse_target("GET", "/v1/Practices/UKTEST1/Patients/SECRET-ID/ContactDetails?q=PHI")
    assert "SECRET" not in parsed.route
    assert "PHI" not in parsed.route


@pytest.mark.parametrize(
    "target",
    [
        "http://example.com/",
        "https://api.ex.softwareofexcellence.com/v1/Subscriptions/active",
        "example.com:443",
        "*",
        "",
        "/v1/Practices/../x",
        "/v1/Practices/UKTEST1/./details",
        "/v1/%2e%2e/x",
        "/v1/%2E./x",
        "/v1/.%2e",
        "/v1/Practices/UKTEST1/..\\x",
        "/v1/Practices/UKTEST1/x%5c..%5cy",
        "/v1/Practices/UK%2fTEST1/details",
        "/v1/Practices/UK%2FTEST1/details",
        "/v1/Practices/UK%20TEST1/details",
        "/v1/Practices//details",
        "/v1/Practices/_UK/details",
        "/v1/Practices/" + "A" * 65 + "/details",
    ],
)
def test_refused_targets(target: str) -> None:
    """Anything that could leave the API host or climb its path is a BadRequest."""
    with pytest.raises(BadRequest):
        parse_target("GET", target)


def test_connect_refused_whatever_the_target() -> None:
    """CONNECT is refused even with an origin-form-looking target."""
    with pytest.raises(BadRequest, match="CONNECT"):
        parse_target("CONNECT", "/v1/Subscriptions/active")


def test_dots_inside_segments_are_fine() -> None:
    """Only whole . and .. segments are dot-segments; dots in names or queries are data."""
    assert parse_target("GET", "/v1/Practices/UKTEST1/details?v=1.0..2").practice_id == "UKTEST1"
    assert parse_target("GET", "/v1/files/a..b").route == OTHER_ROUTE


def test_longest_practice_id_is_accepted() -> None:
    """64 characters is the documented maximum practice id."""
    practice = "A" * 64
    assert parse_target("GET", f"/v1/Practices/{practice}/details").practice_id == practice


def test_method_labels_are_bounded() -> None:
    """Invented methods share one label, so callers cannot create metric series."""
    assert method_label("GET") == "GET"
    assert method_label("PATCH") == "PATCH"
    assert method_label("FOO") == "other"


def _verdict(check: object, path: str) -> str | None:
    try:
        check(path)  # type: ignore[operator]
    except BadRequest as error:
        return error.detail
    return None


def test_shortcut_for_plain_paths_never_changes_a_verdict() -> None:
    """check_canonical skips its regexes for paths without '.', '%', '\\', ';' or '//'; over
    50,000 random paths built from every piece the rules look for, it refuses exactly what
    the rules alone refuse, with the same message."""
    pieces = ["/", "a", "Z", "0", ".", "..", "%2e", "%2E", "%2f", "%5c", "%41", "%20", "%u0041"]
    pieces += ["%", "%g", "\\", ";", "//", "-", "_", "~", "?", "#", "é"]
    rng = random.Random(20241129)
    refused = 0
    for _ in range(50_000):
        path = "/" + "".join(rng.choices(pieces, k=rng.randint(0, 8)))
        verdict = _verdict(_check_canonical_rules, path)
        assert _verdict(check_canonical, path) == verdict, path
        refused += verdict is not None
    assert 5_000 < refused < 45_000  # both verdicts were exercised, many times
