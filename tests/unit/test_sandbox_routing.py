"""The sandbox's ASP.NET-style route matcher."""

from __future__ import annotations

from gateway.sandbox.endpoints import API_ROUTES
from gateway.sandbox.routing import Match, Route, Router, WrongMethod

ROUTER = Router(API_ROUTES)


def _name(method: str, path: str) -> str | None:
    found = ROUTER.match(method, path)
    return found.route.name if isinstance(found, Match) else None


def test_matching_ignores_case_and_one_trailing_slash() -> None:
    """Any letter case and an optional trailing slash reach the same operation."""
    for path in (
        "/v1/Practices/UKTEST1/details",
        "/V1/practices/uktest1/DETAILS",
        "/v1/Practices/UKTEST1/Details/",
    ):
        assert _name("GET", path) == "GetPracticeDetails"
    assert _name("GET", "/v1/Practices/UKTEST1/Appointments/") == "GetAppointments"
    assert _name("GET", "/v1/subscriptions/ACTIVE") == "ListActiveSubscriptions"


def test_parameters_are_captured() -> None:
    """Practice id and record id come back as named parameters."""
    found = ROUTER.match("GET", "/v1/Practices/WFEVAL/Patients/abc/ContactDetails")
    assert isinstance(found, Match)
    assert found.route.name == "GetPatientContactDetails"
    assert found.params == {"practiceId": "WFEVAL", "id": "abc"}


def test_wrong_method_lists_allowed_methods() -> None:
    """An existing path with another method yields WrongMethod and its allowed methods."""
    found = ROUTER.match("DELETE", "/v1/Practices/UKTEST1/Appointments/x")
    assert isinstance(found, WrongMethod)
    assert set(found.allowed) == {"GET", "PATCH"}


def test_non_routes_do_not_match() -> None:
    """Bad practice ids, extra segments and double slashes are not routes."""
    for path in (
        "/v1/Practices/-bad/details",
        "/v1/Practices/UK%2FX/details",
        "/v1/Practices/UKTEST1/details/extra",
        "/v1/Practices/UKTEST1/details//",
        "/v2/Practices/UKTEST1/details",
        "/v1/Practices/" + "A" * 65 + "/details",
    ):
        assert ROUTER.match("GET", path) is None, path


def test_every_endpoint_of_the_facts_sheet_is_routed() -> None:
    """All 13 operations of docs/exact-facts.md §2 exist, each with its scope."""
    scopes = {route.name: route.scope for route in API_ROUTES}
    assert len(scopes) == 13
    assert scopes["ListPayors"] == "payor.list"
    assert scopes["UpdateAppointment"] == "appointment.update"
    assert all(isinstance(route, Route) for route in API_ROUTES)
