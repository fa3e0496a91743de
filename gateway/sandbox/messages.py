"""Patient messages sent through POST …/Patients/{id}/Contact (`PatientContactRequest`).

The API queues the message and answers 202; the sandbox keeps every accepted message so tests
can count side effects exactly (POST Contact is not idempotent, so a proxy that retries it
blindly would show up here as a duplicate).

Validation (assumed; docs/exact-facts.md §5.6 gives only the fields): `type` is `Sms` or `Email`
(case-insensitive, like .NET enums); `body` is a non-empty string; `subject` is a string,
required for `Email`; `scheduled` is an ISO-8601 date-time with offset; `priority` a boolean;
no other fields. The patient must have the channel (`patientHasSms` / `patientHasEmail`).
"""

from __future__ import annotations

from typing import Any

from gateway.sandbox.dates import DateError, format_datetime, parse_offset_datetime

CONTACT_FIELDS = frozenset({"type", "subject", "body", "scheduled", "priority"})
MAX_SMS_LENGTH = 918  # six concatenated SMS parts
_TYPES = {"sms": "Sms", "email": "Email"}


class ContactRejected(ValueError):
    """A contact request the API answers with 400."""


def validate_contact(body: Any, patient: dict[str, Any]) -> dict[str, Any]:
    """The normalised message to queue for `patient`, or `ContactRejected`."""
    if not isinstance(body, dict):
        raise ContactRejected("The request body must be a JSON object")
    unknown = set(body) - CONTACT_FIELDS
    if unknown:
        raise ContactRejected(f"Unknown fields: {', '.join(sorted(unknown))}")
    kind = _kind(body.get("type"))
    text, subject = _text(kind, body.get("body"), body.get("subject"))
    if kind == "Sms" and not patient["patientHasSms"]:
        raise ContactRejected("The patient has no mobile number for Sms")
    if kind == "Email" and not patient["patientHasEmail"]:
        raise ContactRejected("The patient has no email address")
    return {
        "patientId": patient["id"],
        "type": kind,
        "subject": subject,
        "body": text,
        "scheduled": _scheduled(body.get("scheduled")),
        "priority": _priority(body.get("priority")),
    }


def _kind(value: Any) -> str:
    kind = _TYPES.get(value.lower()) if isinstance(value, str) else None
    if kind is None:
        raise ContactRejected("type must be Sms or Email")
    return kind


def _text(kind: str, text: Any, subject: Any) -> tuple[str, str]:
    if not isinstance(text, str) or not text.strip():
        raise ContactRejected("body must be a non-empty string")
    subject = "" if subject is None else subject
    if not isinstance(subject, str):
        raise ContactRejected("subject must be a string")
    if kind == "Email" and not subject.strip():
        raise ContactRejected("subject is required for an Email")
    if kind == "Sms" and len(text) > MAX_SMS_LENGTH:
        raise ContactRejected(f"An Sms body is limited to {MAX_SMS_LENGTH} characters")
    return text, subject


def _scheduled(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ContactRejected("scheduled must be an ISO-8601 date-time string")
    try:
        return format_datetime(parse_offset_datetime(value))
    except DateError as exc:
        raise ContactRejected(f"scheduled: {exc}") from exc


def _priority(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ContactRejected("priority must be true or false")
    return value
