"""Simulated practices: defaults and validated changes from the control endpoint."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.sandbox.config import SandboxConfig
from gateway.sandbox.practices import default_practices, upsert_practice

CONFIG = SandboxConfig(slow_latency_s=0.25, flaky_failure_rate=0.4)


def test_named_practices_and_their_behaviours() -> None:
    """The fresh sandbox has the documented practices, keyed by upper-case id."""
    practices = default_practices(CONFIG)
    expected = {
        "UKTEST1": "healthy", "UKTEST2": "healthy", "WFEVAL": "healthy",
        "UKOFFLINE1": "offline", "UKERROR1": "erroring", "UKSLOW1": "slow",
        "UKFLAKY1": "flaky", "UKTIMEOUT1": "timeout", "UKOLD1": "healthy", "UKLEGACY1": "healthy",
        "UKNOSUB1": "healthy",
    }  # fmt: skip
    assert {k: p.behaviour for k, p in practices.items()} == expected
    assert practices["UKSLOW1"].latency_s == 0.25
    assert practices["UKFLAKY1"].failure_rate == 0.4
    assert practices["UKOLD1"].pms_version == "13.850"  # below PATCH's 13.856
    assert practices["UKLEGACY1"].pms_version == "13.840"  # below the whole API's 13.842
    assert [k for k, p in practices.items() if not p.subscribed] == ["UKNOSUB1"]


def test_upsert_creates_then_updates() -> None:
    """A new id is created subscribed and healthy; later calls change only what is sent."""
    practices = default_practices(CONFIG)
    practice, created = upsert_practice(practices, "ukNew-1", {}, CONFIG)
    assert created
    assert (practice.behaviour, practice.subscribed, practice.practice_id) == (
        "healthy",
        True,
        "ukNew-1",
    )
    again, created = upsert_practice(practices, "UKNEW-1", {"behaviour": "slow"}, CONFIG)
    assert again is practice
    assert not created
    assert practice.latency_s == 0.25  # slow without a latency gets the configured one
    upsert_practice(practices, "UKNEW-1", {"latency_s": 0, "pms_version": "13.9"}, CONFIG)
    assert (practice.latency_s, practice.pms_version, practice.behaviour) == (0, "13.9", "slow")


@pytest.mark.parametrize(
    ("practice_id", "body", "named"),
    [
        ("-bad", {}, "practice id"),
        ("UKTEST1", {"behaviour": "sleepy"}, "behaviour"),
        ("UKTEST1", {"latency_s": -1}, "latency_s"),
        ("UKTEST1", {"latency_s": True}, "latency_s"),
        ("UKTEST1", {"failure_rate": 1.5}, "failure_rate"),
        ("UKTEST1", {"subscribed": "yes"}, "subscribed"),
        ("UKTEST1", {"pms_version": "thirteen"}, "pms_version"),
        ("UKTEST1", {"colour": "red"}, "Unknown fields: colour"),
        ("UKTEST1", ["behaviour"], "JSON object"),
    ],
)
def test_invalid_changes_are_refused_without_effect(
    practice_id: str, body: Any, named: str
) -> None:
    """Bad ids, values or fields raise ValueError and change nothing."""
    practices = default_practices(CONFIG)
    before = practices["UKTEST1"].to_json()
    with pytest.raises(ValueError, match=named):
        upsert_practice(practices, practice_id, body, CONFIG)
    assert practices["UKTEST1"].to_json() == before
    assert len(practices) == 11
