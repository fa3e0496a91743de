"""The pure practice facts: versions learnt and checked, subscription lists parsed and
judged, with an injected clock and hostile bodies."""

from __future__ import annotations

import json

import pytest

from gateway.exact_api import (
    API_MINIMUM_VERSION,
    ROUTES,
    practice_route_minimum,
    route_minimum_version,
)
from gateway.practices.subscriptions import (
    LIST_MAX_BYTES,
    SubscriptionBook,
    SubscriptionPolicy,
    Verdict,
    parse_subscriptions,
)
from gateway.practices.versions import (
    DETAILS_MAX_BYTES,
    VersionBook,
    VersionPolicy,
    version_from_details,
)
from tests.fakes import FakeClock

PATCH = "/v1/Practices/UKOLD1/Appointments/abc"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"null",
        b'{"pmsVersion": 13.85}',
        b'{"pmsVersion": "v13.850"}',
        b'{"pmsVersion": "13.850' + b"9" * 100 + b'"}',
        b"[" * 100_000,
        b'{"pmsVersion": "13.860", "x": "' + b"a" * DETAILS_MAX_BYTES + b'"}',
        b"\xff\xfe",
    ],
)
def test_hostile_details_yield_no_version(body: bytes) -> None:
    """Anything but a small JSON object with a dotted pmsVersion is no version, never an
    exception (deep nesting, huge bodies, wrong types, bad bytes)."""
    assert version_from_details(body) is None


def test_a_version_learnt_recently_is_not_parsed_again() -> None:
    """Details answers are parsed for a version only when it was not learnt in the last
    quarter of its time to live (so each GetPracticeDetails does not pay a JSON parse)."""
    clock = FakeClock()
    book = VersionBook(VersionPolicy(ttl=100), clock)
    assert not book.learnt_recently("UKOLD1")
    book.learn("UKOLD1", "13.850")
    assert book.learnt_recently("ukold1")
    clock.advance(25.1)
    assert not book.learnt_recently("UKOLD1")
    assert book.get("UKOLD1") is not None  # still known until its time to live


def test_practice_route_minimum_agrees_with_matching_the_path() -> None:
    """The per-request look-up by (method, template) gives what matching the path gives."""
    for route in ROUTES:
        if route.template.startswith("/v1/Practices/"):
            path = route.template.replace("{practiceId}", "UKP1").replace("{id}", "x")
            for method in ("GET", "PATCH", "POST", "DELETE"):
                assert practice_route_minimum(method, route.template) == (
                    route_minimum_version(method, path)
                ), (method, path)
    assert practice_route_minimum("GET", "other") == API_MINIMUM_VERSION


def test_version_admission_ttl_and_lookups() -> None:
    """A known old version refuses PATCH (not GET); it expires after the TTL (fail open);
    look-ups are claimed once, and a failed one is not repeated before its pause."""
    clock = FakeClock()
    book = VersionBook(VersionPolicy(ttl=10, retry_after_failure=5), clock)
    assert book.check(route_minimum_version("PATCH", PATCH), "UKOLD1") is None  # unknown: pass
    assert book.wants_lookup("ukold1")
    assert not book.wants_lookup("UKOLD1")  # single flight
    book.lookup_done("UKOLD1", version_from_details(json.dumps({"pmsVersion": "13.850"}).encode()))
    refusal = book.check(route_minimum_version("PATCH", PATCH), "ukold1")
    assert refusal is not None
    assert refusal.problem("r")["minimum_version"] == "13.856"
    assert book.check(route_minimum_version("GET", PATCH), "UKOLD1") is None
    clock.advance(10.1)
    assert book.check(route_minimum_version("PATCH", PATCH), "UKOLD1") is None
    assert book.wants_lookup("UKOLD1")
    book.lookup_done("UKOLD1", None)
    assert not book.wants_lookup("UKOLD1")
    clock.advance(5.1)
    assert book.wants_lookup("UKOLD1")


@pytest.mark.parametrize(
    "body",
    [b"{}", b'["UK/1"]', b"[1]", b'["' + b"a" * 65 + b'"]', b" " * (LIST_MAX_BYTES + 1), b"["],
)
def test_unusable_subscription_lists_are_refused(body: bytes) -> None:
    """A list we cannot trust whole must not refuse anyone: it is no list at all."""
    assert parse_subscriptions(body) is None


def test_subscription_verdicts_freshness_and_rechecks() -> None:
    """Listed → subscribed; not listed on a fresh list → not listed; a stale list → unknown
    (fail open); re-checks at most once per interval; the first list reports no additions."""
    clock = FakeClock()
    book = SubscriptionBook(SubscriptionPolicy(refresh_interval=10, recheck_interval=2), clock)
    assert book.verdict("UKTEST1") is Verdict.UNKNOWN
    first = book.replace(["UKTEST1", "UKTEST2"])
    assert first.added == ()
    assert book.verdict("uktest1") is Verdict.SUBSCRIBED
    assert book.verdict("UKNOSUB1") is Verdict.NOT_LISTED
    assert book.may_recheck()
    assert not book.may_recheck()
    clock.advance(2)
    assert book.may_recheck()
    changes = book.replace(["UKTEST1", "UKNEW1"])
    assert changes.added == ("UKNEW1",)
    assert changes.removed == ("UKTEST2",)
    clock.advance(30.1)
    assert book.verdict("UKNOSUB1") is Verdict.UNKNOWN
