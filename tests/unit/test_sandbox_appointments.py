"""PATCH rules for appointments: partial updates, validation (400) and conflicts (409)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from gateway.sandbox.appointments import API_USER_ID, UpdateRejected, apply_update
from gateway.sandbox.dataset import UK_SUMMER

NOW = datetime(2024, 5, 2, 10, 0, tzinfo=UK_SUMMER)


def _appointment(status: str = "Confirmed", **extra: Any) -> dict[str, Any]:
    return {
        "id": "00004000-1200-0000-0000-008034ec7256",
        "status": status,
        "startDate": "2024-05-10T09:00:00+01:00",
        "endDate": "2024-05-10T09:30:00+01:00",
        "chairDurationMinutes": 30,
        "scheduledDurationMinutes": 30,
        "actualDurationMinutes": 0,
        "arrivalDate": None,
        "completionDate": None,
        "cancellationDate": None,
        "lastUpdatedDate": None,
        "lastUpdatedByUserId": None,
        **extra,
    }


def _rejected(current: dict[str, Any], body: Any) -> UpdateRejected:
    with pytest.raises(UpdateRejected) as caught:
        apply_update(current, body, NOW)
    return caught.value


def test_only_sent_fields_change() -> None:
    """A status-only PATCH changes status and bookkeeping, nothing else."""
    current = _appointment()
    updated = apply_update(current, {"status": "pending"}, NOW)
    assert updated["status"] == "Pending"
    assert updated["startDate"] == current["startDate"]
    assert updated["lastUpdatedDate"] == "2024-05-02T10:00:00+01:00"
    assert updated["lastUpdatedByUserId"] == API_USER_ID
    assert current["status"] == "Confirmed"  # the input is not mutated


def test_moving_start_keeps_the_duration_and_normalises_offset() -> None:
    """A new startDate in UTC moves endDate along and is stored in practice time."""
    updated = apply_update(_appointment(), {"startDate": "2024-05-11T13:00:00Z"}, NOW)
    assert updated["startDate"] == "2024-05-11T14:00:00+01:00"
    assert updated["endDate"] == "2024-05-11T14:30:00+01:00"


def test_explicit_dates_and_durations() -> None:
    """Both dates and a chair duration can be set together."""
    updated = apply_update(
        _appointment(),
        {
            "startDate": "2024-05-11T10:00:00+01:00",
            "endDate": "2024-05-11T10:45:00+0100",
            "chairDurationMinutes": 50,
        },
        NOW,
    )
    assert updated["scheduledDurationMinutes"] == 45
    assert updated["chairDurationMinutes"] == 50


def test_status_changes_stamp_their_dates() -> None:
    """Arrived stamps arrivalDate; Completed stamps completionDate; Cancelled its date."""
    arrived = apply_update(_appointment(), {"status": "Arrived"}, NOW)
    assert arrived["arrivalDate"] == "2024-05-02T10:00:00+01:00"
    done = apply_update(arrived, {"status": "Completed"}, NOW)
    assert done["completionDate"] is not None
    assert done["actualDurationMinutes"] == 30
    cancelled = apply_update(_appointment(), {"status": "Cancelled"}, NOW)
    assert cancelled["cancellationDate"] is not None


def test_repeating_current_values_is_not_a_change() -> None:
    """Sending what is already there returns the record untouched, even when final."""
    current = _appointment("Completed")
    assert apply_update(current, {"status": "Completed"}, NOW) is current
    assert apply_update(current, {}, NOW) is current


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"notes": "x"},
        {"status": "Booked"},
        {"status": 3},
        {"startDate": "2024-05-11T10:00:00"},
        {"startDate": 5},
        {"endDate": "2024-05-10T08:00:00+01:00"},
        {"chairDurationMinutes": 0},
        {"scheduledDurationMinutes": True},
        {"scheduledDurationMinutes": "30"},
    ],
)
def test_bad_bodies_are_400(body: Any) -> None:
    """Unknown fields, bad enums, offset-less dates and bad numbers are 400."""
    assert _rejected(_appointment(), body).status == 400


@pytest.mark.parametrize(
    ("status", "body"),
    [
        ("Cancelled", {"status": "Confirmed"}),
        ("Completed", {"status": "Arrived"}),
        ("DidNotAttend", {"startDate": "2024-06-01T09:00:00+01:00"}),
        ("Completed", {"chairDurationMinutes": 45}),
        ("Pending", {"status": "Completed"}),
        ("InSurgery", {"status": "Cancelled"}),
        ("Arrived", {"startDate": "2024-06-01T09:00:00+01:00"}),
    ],
)
def test_invalid_transitions_are_409(status: str, body: dict[str, Any]) -> None:
    """Final appointments cannot change; illegal moves and late reschedules conflict."""
    assert _rejected(_appointment(status), body).status == 409
