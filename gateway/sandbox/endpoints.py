"""The endpoints of the simulated EXACT API: one handler per operation of the EXACT facts
table (`gateway.exact_api`, which holds each operation's path template, scope and minimum
EXACT version).

Handlers run only after the relay's checks (see `api`) and answer as the practice's server
would: JSON records, or an `ApiError` carrying the status and plain-text message.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left, bisect_right
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.exact_api import ROUTES, Route
from gateway.sandbox.appointments import UpdateRejected, apply_update, parse_status
from gateway.sandbox.dataset import (
    UK_SUMMER,
    Appointment,
    PracticeRecords,
    encode_record,
    record_id,
)
from gateway.sandbox.dates import DateError, format_datetime, parse_offset_datetime
from gateway.sandbox.messages import ContactRejected, validate_contact
from gateway.sandbox.paging import ContinuationError, take_page
from gateway.sandbox.practices import Practice
from gateway.sandbox.state import SandboxState
from gateway.sandbox.token_issuer import IssuedToken

CONTINUATION = "continuationToken"
_VERSION_HEADERS = {"api-supported-versions": "1.0"}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_JSON_TYPES = ("application/json", "application/merge-patch+json")
_EMAIL_SCOPE = "patient.get.contactdetails.email"
_PHONE_SCOPE = "patient.get.contactdetails.phone"


class ApiError(Exception):
    """An error answer of the API: status, plain-text message, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def response(self) -> web.Response:
        """The answer as the API sends it."""
        return web.Response(
            status=self.status,
            text=self.message,
            headers={**_VERSION_HEADERS, **self.headers},
        )


@dataclass(slots=True)
class Call:
    """One API request that passed the relay's checks."""

    request: web.Request
    state: SandboxState
    token: IssuedToken
    practice: Practice
    params: dict[str, str]
    route: Route

    @property
    def records(self) -> PracticeRecords:
        """The practice's patients and appointments."""
        return self.state.data.records(self.practice.practice_id)


Handler = Callable[[Call], Awaitable[web.Response]]


def json_answer(value: Any, *, status: int = 200) -> web.Response:
    return _raw_json(encode_record(value), status=status)


def _raw_json(
    body: bytes, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=body,
        status=status,
        content_type="application/json",
        headers={**_VERSION_HEADERS, **(headers or {})},
    )


def _uuid(value: str, name: str = "id") -> str:
    if _UUID.fullmatch(value) is None:
        raise ApiError(400, f"The value '{value}' is not a valid uuid for {name}")
    return value.lower()


def _lookup(table: dict[str, Any], call: Call, kind: str) -> Any:
    record_key = _uuid(call.params["id"])
    found = table.get(record_key)
    if found is None:
        raise ApiError(404, f"{kind} '{call.params['id']}' was not found")
    return found


async def _json_body(request: web.Request) -> Any:
    if request.content_type not in _JSON_TYPES:
        raise ApiError(415, "The request body must be application/json")
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}") from exc


async def practice_details(call: Call) -> web.Response:
    """GetPracticeDetails, with the version the practice runs right now."""
    data = call.state.data.practice(call.practice.practice_id)
    version = call.practice.pms_version
    return json_answer(
        {**data.details, "pmsVersion": version, "pmsDisplayVersion": f"EXACT v{version}"}
    )


async def get_appointment(call: Call) -> web.Response:
    """One appointment by id."""
    appointment: Appointment = _lookup(call.records.appointments, call, "Appointment")
    return _raw_json(appointment.body)


async def update_appointment(call: Call) -> web.Response:
    """PATCH an appointment; answers the updated record."""
    appointment: Appointment = _lookup(call.records.appointments, call, "Appointment")
    body = await _json_body(call.request)
    now = datetime.fromtimestamp(call.state.config.clock(), UK_SUMMER)
    try:
        updated = apply_update(appointment.data, body, now)
    except UpdateRejected as exc:
        raise ApiError(exc.status, exc.message) from exc
    if updated is appointment.data:
        return _raw_json(appointment.body)
    return _raw_json(call.state.data.save_appointment(call.practice.practice_id, updated).body)


async def list_appointments(call: Call) -> web.Response:
    """Appointments starting in [from, to), filtered, in pages cut by response size."""
    query = call.request.rel_url.query
    start = _required_date(query.get("from"), "from")
    end = _required_date(query.get("to"), "to")
    if end < start:
        raise ApiError(400, "'to' must not be before 'from'")
    # ASP.NET binds an empty value to null for a nullable parameter, so `status=` (which the
    # only public client always sends) and an empty id mean "no filter", not 400.
    try:
        statuses = frozenset(parse_status(s) for s in query.getall("status", []) if s)
    except UpdateRejected as exc:
        raise ApiError(400, exc.message) from exc
    practitioner = _optional_uuid(query.get("practitionerId"), "practitionerId")
    patient = _optional_uuid(query.get("patientId"), "patientId")
    location = _optional_uuid(query.get("locationId"), "locationId")
    # The token only works with the query it was issued for.
    scope = "|".join(
        [
            call.practice.practice_id.upper(),
            repr(start),
            repr(end),
            ",".join(sorted(statuses)),
            practitioner or "",
            patient or "",
            location or "",
        ]
    )
    ordered = call.records.ordered
    token = query.get(CONTINUATION) or call.request.headers.get(CONTINUATION)
    if token:
        try:
            cursor = call.state.continuation.decode(scope, token)
        except ContinuationError as exc:
            raise ApiError(400, str(exc)) from exc
        first = bisect_right(ordered, cursor, key=lambda a: a.sort_key)
    else:
        first = bisect_left(ordered, (start, ""), key=lambda a: a.sort_key)

    def matching() -> Iterator[Appointment]:
        for index in range(first, len(ordered)):
            appointment = ordered[index]
            if appointment.start >= end:
                return
            data = appointment.data
            if statuses and data["status"] not in statuses:
                continue
            if patient and data["patientId"].lower() != patient:
                continue
            if location and (data["location"] or {}).get("id", "").lower() != location:
                continue
            if practitioner and all(p["id"].lower() != practitioner for p in data["providers"]):
                continue
            yield appointment

    budget = call.state.config.page_budget_bytes
    page, more = take_page(matching(), lambda a: len(a.body), budget)
    headers = (
        {CONTINUATION: call.state.continuation.encode(scope, page[-1].sort_key)} if more else {}
    )
    return _raw_json(b"[" + b",".join(a.body for a in page) + b"]", headers=headers)


def _required_date(value: str | None, name: str) -> float:
    if not value:
        raise ApiError(400, f"The '{name}' query parameter is required")
    try:
        return parse_offset_datetime(value).timestamp()
    except DateError as exc:
        raise ApiError(400, f"{name}: {exc}") from exc


def _optional_uuid(value: str | None, name: str) -> str | None:
    return _uuid(value, name) if value else None


async def list_patients(call: Call) -> web.Response:
    """Every patient of the practice."""
    return _raw_json(call.records.patients_body)


async def get_patient(call: Call) -> web.Response:
    """One patient by id."""
    return json_answer(_lookup(call.records.patients_by_id, call, "Patient"))


async def patient_contact_details(call: Call) -> web.Response:
    """Emails and phone numbers, each only with its own scope (docs/exact-facts.md §5.5)."""
    patient = _lookup(call.records.patients_by_id, call, "Patient")
    details = call.records.contact_details[patient["id"]]
    answer: dict[str, Any] = {}
    if _EMAIL_SCOPE in call.token.scopes:
        answer["emailAddresses"] = details["emailAddresses"]
    if _PHONE_SCOPE in call.token.scopes:
        answer["phoneNumbers"] = details["phoneNumbers"]
    return json_answer(answer)


async def contact_patient(call: Call) -> web.Response:
    """Queue a message to a patient: 202, recorded for `/_sandbox/messages`."""
    patient = _lookup(call.records.patients_by_id, call, "Patient")
    body = await _json_body(call.request)
    try:
        message = validate_contact(body, patient)
    except ContactRejected as exc:
        raise ApiError(400, str(exc)) from exc
    state = call.state
    queued = state.messages.setdefault(call.practice.practice_id, [])
    total = sum(len(m) for m in state.messages.values())
    now = datetime.fromtimestamp(state.config.clock(), UK_SUMMER)
    queued.append(
        {"id": record_id(total + 1, "1700"), "acceptedAt": format_datetime(now), **message}
    )
    return web.Response(status=202, headers=_VERSION_HEADERS)


async def list_payors(call: Call) -> web.Response:
    """The practice's payors."""
    return json_answer(call.state.data.practice(call.practice.practice_id).payors)


async def get_payor(call: Call) -> web.Response:
    """One payor by id."""
    data = call.state.data.practice(call.practice.practice_id)
    return json_answer(_lookup(data.payors_by_id, call, "Payor"))


async def list_practitioners(call: Call) -> web.Response:
    """The practice's practitioners, including those no longer active."""
    return json_answer(call.state.data.practice(call.practice.practice_id).practitioners)


async def get_practitioner(call: Call) -> web.Response:
    """One practitioner by id."""
    data = call.state.data.practice(call.practice.practice_id)
    return json_answer(_lookup(data.practitioners_by_id, call, "Practitioner"))


# One handler per operation of the EXACT facts table; the practice-less subscriptions list
# is answered by the relay itself (see `api`).
ENDPOINT_HANDLERS: dict[str, Handler] = {
    "GetPracticeDetails": practice_details,
    "GetAppointment": get_appointment,
    "UpdateAppointment": update_appointment,
    "GetAppointments": list_appointments,
    "ListPatients": list_patients,
    "GetPatient": get_patient,
    "GetPatientContactDetails": patient_contact_details,
    "ContactPatient": contact_patient,
    "ListPayors": list_payors,
    "GetPayor": get_payor,
    "ListPractitioners": list_practitioners,
    "GetPractitioner": get_practitioner,
}
API_ROUTES: tuple[Route, ...] = ROUTES
if {r.name for r in ROUTES if r.for_practice} != set(ENDPOINT_HANDLERS):  # pragma: no cover
    raise RuntimeError("every practice route of gateway.exact_api needs a sandbox handler")
