"""Rules for changing an appointment through PATCH (`UpdateAppointmentModel`).

The real field list is unknown (docs/exact-facts.md §5.2); the sandbox accepts the likely ones:
`status`, `startDate`, `endDate`, `chairDurationMinutes` and `scheduledDurationMinutes`.
Only the fields sent change. Any other field, or a bad value, is 400; a change the
appointment's state does not allow is 409 (assumptions, documented here):

* `Completed`, `Cancelled` and `DidNotAttend` are final: any actual change is 409;
* status moves follow `TRANSITIONS`; repeating the current value is always allowed;
* only appointments that have not started (`Unset`, `Pending`, `Confirmed`) can be moved.

Moving `startDate` alone keeps the scheduled duration; the status change stamps
`arrivalDate`, `completionDate` or `cancellationDate` with the sandbox clock's "now".
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from gateway.sandbox.dataset import APPOINTMENT_STATUSES, UK_SUMMER, record_id
from gateway.sandbox.dates import DateError, format_datetime, parse_offset_datetime

UPDATABLE_FIELDS = frozenset(
    {"status", "startDate", "endDate", "chairDurationMinutes", "scheduledDurationMinutes"}
)
FINAL_STATUSES = frozenset({"Completed", "Cancelled", "DidNotAttend"})
MOVABLE_STATUSES = frozenset({"Unset", "Pending", "Confirmed"})
TRANSITIONS: dict[str, frozenset[str]] = {
    "Unset": frozenset({"Pending", "Confirmed", "Arrived", "Cancelled", "DidNotAttend"}),
    "Pending": frozenset({"Confirmed", "Arrived", "Cancelled", "DidNotAttend"}),
    "Confirmed": frozenset({"Pending", "Arrived", "Cancelled", "DidNotAttend"}),
    "Arrived": frozenset({"InSurgery", "Completed", "Confirmed"}),
    "InSurgery": frozenset({"Completed", "Arrived"}),
    "Completed": frozenset(),
    "Cancelled": frozenset(),
    "DidNotAttend": frozenset(),
}
# The user EXACT records as the author of changes made through the API.
API_USER_ID = record_id(0x99, "1000")
MAX_DURATION_MINUTES = 8 * 60
_STATUS_BY_LOWER = {s.lower(): s for s in APPOINTMENT_STATUSES}


class UpdateRejected(Exception):
    """A PATCH the API refuses; `status` is 400 (bad request) or 409 (conflict)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_status(value: Any) -> str:
    """Canonical AppointmentStatus for `value`, matched case-insensitively like .NET enums."""
    status = _STATUS_BY_LOWER.get(value.lower()) if isinstance(value, str) else None
    if status is None:
        raise UpdateRejected(
            400, f"status must be one of {', '.join(APPOINTMENT_STATUSES)}, got {value!r}"
        )
    return status


def _parse_date(body: dict[str, Any], name: str) -> datetime | None:
    if name not in body:
        return None
    value = body[name]
    if not isinstance(value, str):
        raise UpdateRejected(400, f"{name} must be an ISO-8601 date-time string")
    try:
        return parse_offset_datetime(value).astimezone(UK_SUMMER)
    except DateError as exc:
        raise UpdateRejected(400, f"{name}: {exc}") from exc


def _parse_minutes(body: dict[str, Any], name: str) -> int | None:
    if name not in body:
        return None
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise UpdateRejected(400, f"{name} must be an integer number of minutes")
    if not 1 <= value <= MAX_DURATION_MINUTES:
        raise UpdateRejected(400, f"{name} must be between 1 and {MAX_DURATION_MINUTES}")
    return value


def apply_update(current: dict[str, Any], body: Any, now: datetime) -> dict[str, Any]:
    """The appointment after `body` is applied to `current`, or `UpdateRejected`."""
    if not isinstance(body, dict):
        raise UpdateRejected(400, "The request body must be a JSON object")
    unknown = set(body) - UPDATABLE_FIELDS
    if unknown:
        raise UpdateRejected(400, f"Fields that cannot be updated: {', '.join(sorted(unknown))}")
    status = parse_status(body["status"]) if "status" in body else current["status"]
    start_in, end_in = _parse_date(body, "startDate"), _parse_date(body, "endDate")
    scheduled_in = _parse_minutes(body, "scheduledDurationMinutes")
    chair_in = _parse_minutes(body, "chairDurationMinutes")

    old_start = datetime.fromisoformat(current["startDate"])
    old_end = datetime.fromisoformat(current["endDate"])
    start = start_in or old_start
    if end_in is not None:
        end = end_in
    elif start_in is not None or scheduled_in is not None:
        end = start + timedelta(minutes=scheduled_in or current["scheduledDurationMinutes"])
    else:
        end = old_end
    if end <= start:
        raise UpdateRejected(400, "endDate must be after startDate")
    scheduled = scheduled_in or int((end - start).total_seconds() // 60)

    updated = dict(current)
    updated.update(
        status=status,
        startDate=format_datetime(start),
        endDate=format_datetime(end),
        scheduledDurationMinutes=scheduled,
        chairDurationMinutes=chair_in or current["chairDurationMinutes"],
    )
    changed = {k for k in UPDATABLE_FIELDS if updated[k] != current[k]}
    if not changed:
        return current  # repeating what is already there is not a change
    old_status = current["status"]
    if old_status in FINAL_STATUSES:
        raise UpdateRejected(409, f"The appointment is {old_status} and can no longer change")
    if status != old_status and status not in TRANSITIONS[old_status]:
        raise UpdateRejected(409, f"Cannot change status from {old_status} to {status}")
    if changed & {"startDate", "endDate"} and old_status not in MOVABLE_STATUSES:
        raise UpdateRejected(409, f"An appointment that is {old_status} cannot be moved")
    _stamp_status_change(updated, old_status, now)
    updated["lastUpdatedDate"] = format_datetime(now)
    updated["lastUpdatedByUserId"] = API_USER_ID
    return updated


def _stamp_status_change(updated: dict[str, Any], old_status: str, now: datetime) -> None:
    status = updated["status"]
    if status == old_status:
        return
    stamp = format_datetime(now)
    if status in ("Arrived", "InSurgery") and updated["arrivalDate"] is None:
        updated["arrivalDate"] = stamp
    elif status == "Completed":
        updated["arrivalDate"] = updated["arrivalDate"] or stamp
        updated["completionDate"] = stamp
        updated["actualDurationMinutes"] = updated["scheduledDurationMinutes"]
    elif status == "Cancelled":
        updated["cancellationDate"] = stamp
    elif old_status == "Arrived" and status == "Confirmed":
        updated["arrivalDate"] = None  # arrival recorded by mistake, undone
