"""Deterministic, realistic records for one simulated practice.

Every practice gets its own data, seeded from the sandbox seed and the practice id, so two
runs (and two sandboxes) with the same seed serve byte-identical answers. The cheap part (the
practice's details, practitioners, payors and locations) is built at once; the patients and
appointments are built on first use, because most simulated practices in a load test are only
ever asked for their details or never asked at all.

Ids follow the pattern seen in real EXACT QA data: an 8-hex record counter and a fixed tail
(`{counter}-1300-0000-0000-008034ec7256` for patients), with a different second block per kind
of record. All appointments fall in April to July 2024, which is all British Summer Time, so
every timestamp carries `+01:00` and the practice reports an offset of 60 minutes.
"""

from __future__ import annotations

import json
import random
import zlib
from bisect import insort
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import cached_property
from typing import Any

from gateway.sandbox import names
from gateway.sandbox.dates import format_datetime

UK_SUMMER = timezone(timedelta(hours=1))
REFERENCE_NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UK_SUMMER)
WINDOW_START = date(2024, 4, 1)
WINDOW_END = date(2024, 7, 31)
ID_TAIL = "0000-0000-008034ec7256"
KIND_USER = "1000"
KIND_PRACTITIONER = "1100"
KIND_APPOINTMENT = "1200"
KIND_PATIENT = "1300"
KIND_LOCATION = "1400"
KIND_PAYOR = "1500"

APPOINTMENT_STATUSES: tuple[str, ...] = (
    "Unset",
    "Pending",
    "Arrived",
    "InSurgery",
    "Completed",
    "DidNotAttend",
    "Confirmed",
    "Cancelled",
)
PATIENT_COUNT = 300
APPOINTMENT_COUNT = 500
_SLOT_MINUTES = 30
_FIRST_SLOT = 8 * 60 + 30  # 08:30
_SLOTS_PER_DAY = 17  # up to 17:00
_PAYORS: tuple[tuple[str, str, str], ...] = (
    ("Private", "Private", "Private patient"),
    ("NhsEngland", "NHS England", "NHS (England)"),
    ("Denplan", "Denplan", "Denplan Care"),
    ("CapitationPlan", "Practice Plan", "Practice membership plan"),
)
_OPENING_HOURS: dict[str, dict[str, str] | None] = {
    "monday": {"open": "08:30", "close": "17:30"},
    "tuesday": {"open": "08:30", "close": "17:30"},
    "wednesday": {"open": "08:30", "close": "19:00"},
    "thursday": {"open": "08:30", "close": "17:30"},
    "friday": {"open": "08:30", "close": "16:00"},
    "saturday": {"open": "09:00", "close": "12:30"},
    "sunday": None,
}
_NAMED_PRACTICES: dict[str, str] = {
    "WFEVAL": "Waterfront Evaluation Dental",
    "UKTEST1": "Abbey Road Dental Practice",
    "UKTEST2": "Castle Street Dental Care",
}


def record_id(number: int, kind: str) -> str:
    """An EXACT-style record id: hex counter, record kind, fixed tail."""
    return f"{number:08x}-{kind}-{ID_TAIL}"


def practice_seed(seed: int, practice_id: str) -> int:
    """The PRNG seed of one practice; independent of the id's letter case."""
    return seed ^ zlib.crc32(practice_id.upper().encode())


def encode_record(record: Any) -> bytes:
    """The exact bytes a record takes inside a JSON response body."""
    return json.dumps(record, separators=(",", ":")).encode()


@dataclass(slots=True)
class Appointment:
    """An appointment with what listing needs precomputed: its start instant and its JSON."""

    id: str
    start: float
    data: dict[str, Any]
    body: bytes

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Appointment:
        """Index a record; its id is kept lower-case because ids compare case-insensitively."""
        start = datetime.fromisoformat(data["startDate"]).timestamp()
        return cls(str(data["id"]).lower(), start, data, encode_record(data))

    @property
    def sort_key(self) -> tuple[float, str]:
        """Lists are ordered by start, then id, so paging has a stable total order."""
        return (self.start, self.id)


class PracticeRecords:
    """Patients and appointments of a practice, indexed for lookups and ordered listing."""

    def __init__(
        self,
        patients: list[dict[str, Any]],
        contact_details: dict[str, dict[str, Any]],
        appointments: list[dict[str, Any]],
    ) -> None:
        self.patients = patients
        self.patients_body = encode_record(patients)
        self.patients_by_id = {str(p["id"]).lower(): p for p in patients}
        self.contact_details = contact_details
        indexed = [Appointment.from_data(a) for a in appointments]
        self.appointments = {a.id: a for a in indexed}
        self.ordered = sorted(indexed, key=lambda a: a.sort_key)

    def replace_appointment(self, data: dict[str, Any]) -> Appointment:
        """Store an updated appointment, keeping the listing order right if it moved."""
        new = Appointment.from_data(data)
        old = self.appointments[new.id]
        self.appointments[new.id] = new
        self.ordered.remove(old)
        insort(self.ordered, new, key=lambda a: a.sort_key)
        return new


class PracticeData:
    """Everything a practice's on-premises server would answer with, built from a seed."""

    def __init__(
        self, practice_id: str, seed: int, patches: Mapping[str, dict[str, Any]] | None = None
    ) -> None:
        self.practice_id = practice_id
        # Edits made earlier (kept by the caller across cache eviction) are replayed on build.
        self._patches = patches or {}
        self._seed = practice_seed(seed, practice_id)
        rng = random.Random(self._seed)
        name, town = _practice_name(rng, practice_id)
        self.locations = _locations(rng, town)
        self.payors = [
            {
                "id": record_id(0x10 + n, KIND_PAYOR),
                "payorType": payor_type,
                "name": name,
                "displayName": display,
                "isActive": True,
            }
            for n, (payor_type, name, display) in enumerate(_PAYORS)
        ]
        self.practitioners = _practitioners(rng)
        self.details = _details(
            rng,
            practice_id,
            name=name,
            town_info=town,
            locations=self.locations,
            payors=self.payors,
        )
        self.payors_by_id = {str(p["id"]).lower(): p for p in self.payors}
        self.practitioners_by_id = {str(p["id"]).lower(): p for p in self.practitioners}
        self.users = [record_id(n, KIND_USER) for n in range(1, 6)]

    @cached_property
    def records(self) -> PracticeRecords:
        """Patients and appointments, generated on first use from their own PRNG stream."""
        rng = random.Random(self._seed + 1)
        patients, contacts = _patients(rng, self)
        appointments = _appointments(rng, self, patients)
        records = PracticeRecords(patients, contacts, appointments)
        for patch in self._patches.values():
            records.replace_appointment(patch)
        return records


def _practice_name(rng: random.Random, practice_id: str) -> tuple[str, tuple[str, str, str]]:
    town = rng.choice(names.TOWNS)
    name = _NAMED_PRACTICES.get(practice_id.upper())
    if name is None:
        name = f"{town[0]} {rng.choice(names.PRACTICE_SUFFIXES)}"
    return name, town


def _street_address(rng: random.Random) -> str:
    return f"{rng.randint(1, 180)} {rng.choice(names.STREETS)}"


def _postcode(rng: random.Random, area: str) -> str:
    letters = "ABDEFGHJLNPQRSTUWXYZ"  # the letters Royal Mail uses in the inward code
    return f"{area} {rng.randint(1, 9)}{rng.choice(letters)}{rng.choice(letters)}"


def _locations(rng: random.Random, town_info: tuple[str, str, str]) -> list[dict[str, Any]]:
    town, county, area = town_info
    sites = [("MAIN", f"{town} Main Surgery"), ("ANNEX", f"{town} Annexe")]
    return [
        {
            "id": record_id(0x20 + n, KIND_LOCATION),
            "code": code,
            "name": name,
            "phone": f"01632 960{rng.randint(0, 999):03d}",
            "fax": f"01632 961{rng.randint(0, 999):03d}",
            "line1": _street_address(rng),
            "line2": town,
            "line3": county,
            "postCode": _postcode(rng, area),
        }
        for n, (code, name) in enumerate(sites)
    ]


def _practitioners(rng: random.Random) -> list[dict[str, Any]]:
    roles = ["Dentist"] * rng.randint(3, 4) + ["Hygienist"] * rng.randint(1, 2)
    practitioners = []
    for n, role in enumerate(roles):
        female = rng.random() < 0.5
        first = rng.choice(names.FEMALE_FIRST_NAMES if female else names.MALE_FIRST_NAMES)
        last = rng.choice(names.SURNAMES)
        title = "Dr " if role == "Dentist" else ""
        practitioners.append(
            {
                "id": record_id(0x100 + n, KIND_PRACTITIONER),
                "role": role,
                "userName": f"{first[0]}{last}".lower().replace("'", ""),
                "name": f"{title}{first} {last}",
                # The last dentist has left the practice: realistic data has inactive staff.
                "isActive": not (role == "Dentist" and n == roles.count("Dentist") - 1),
            }
        )
    return practitioners


def _details(
    rng: random.Random,
    practice_id: str,
    *,
    name: str,
    town_info: tuple[str, str, str],
    locations: list[dict[str, Any]],
    payors: list[dict[str, Any]],
) -> dict[str, Any]:
    town, county, area = town_info
    slug = "".join(c for c in name.lower() if c.isalnum())
    return {
        "practiceId": practice_id,
        "practiceName": name,
        "installationId": _uuid(rng),
        "organizationId": _uuid(rng),
        "organizationName": f"{name} Ltd",
        "address": {
            "line1": _street_address(rng),
            "line2": "",
            "line3": town,
            "line4": county,
            "postCode": _postcode(rng, area),
        },
        "phoneNumber": str(locations[0]["phone"]),
        "emailAddress": f"reception@{slug}.example.com",
        "websiteAddress": f"https://www.{slug}.example.com",
        "country": "United Kingdom",
        "countrySubdivision": "England",
        "brandingLogoUrl": f"https://www.{slug}.example.com/logo.png",
        "supportedPayors": payors,
        "openingHours": _OPENING_HOURS,
        "practiceTimezoneUtcOffsetMinutes": 60,
        "pmsVersion": "",  # filled from the practice's current state at answer time
        "pmsDisplayVersion": "",
        "updatedOn": "2024-04-28T18:02:11+01:00",
        "locations": locations,
    }


def _uuid(rng: random.Random) -> str:
    value = f"{rng.getrandbits(128):032x}"
    return f"{value[:8]}-{value[8:12]}-4{value[13:16]}-a{value[17:20]}-{value[20:]}"


def _nhs_number(rng: random.Random) -> str:
    # 999 is the NHS range reserved for testing; the last digit is the real modulus-11 check.
    while True:
        digits = [9, 9, 9] + [rng.randint(0, 9) for _ in range(6)]
        check = 11 - sum(d * (10 - i) for i, d in enumerate(digits)) % 11
        if check == 11:
            check = 0
        if check != 10:
            return "".join(map(str, [*digits, check]))


def _patients(
    rng: random.Random, data: PracticeData
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    dentists = [p["id"] for p in data.practitioners if p["role"] == "Dentist" and p["isActive"]]
    hygienists = [p["id"] for p in data.practitioners if p["role"] == "Hygienist"]
    counter = rng.randint(0x400, 0x2000)
    patients: list[dict[str, Any]] = []
    contacts: dict[str, dict[str, Any]] = {}
    while len(patients) < PATIENT_COUNT:
        surname = rng.choice(names.SURNAMES)
        payor = rng.choice(data.payors)
        dentist = rng.choice(dentists)
        household = min(rng.choice((1, 1, 2, 2, 3, 4)), PATIENT_COUNT - len(patients))
        head_id = record_id(counter, KIND_PATIENT)
        for member in range(household):
            patient_id = record_id(counter, KIND_PATIENT)
            counter += 1
            adult = member < 2
            patient = _patient(rng, patient_id, head_id, surname, adult=adult)
            patient["defaultDentistId"] = dentist
            patient["defaultHygienistId"] = rng.choice(hygienists) if rng.random() < 0.6 else None
            patient["defaultPayor"] = payor["payorType"]
            patients.append(patient)
            contacts[patient_id] = _contact_details(rng, patient)
    return patients, contacts


def _patient(
    rng: random.Random, patient_id: str, head_id: str, surname: str, *, adult: bool
) -> dict[str, Any]:
    female = rng.random() < 0.52
    first = rng.choice(names.FEMALE_FIRST_NAMES if female else names.MALE_FIRST_NAMES)
    age_days = rng.randint(18 * 365, 85 * 365) if adult else rng.randint(2 * 365, 17 * 365)
    born = REFERENCE_NOW.date() - timedelta(days=age_days)
    if adult:
        title = rng.choice(("Mrs", "Ms", "Miss", "Dr")) if female else rng.choice(("Mr", "Dr"))
        title = title if rng.random() < 0.9 or title == "Mr" else "Mx"
    else:
        title = "Miss" if female else "Master"
    middle = rng.choice(names.FEMALE_FIRST_NAMES if female else names.MALE_FIRST_NAMES)
    has_sms = rng.random() < 0.85
    has_email = rng.random() < 0.75
    return {
        "id": patient_id,
        "payingPatientId": head_id,
        "isActive": rng.random() < 0.95,
        "dateOfBirth": born.isoformat(),
        "defaultDentistId": None,
        "defaultHygienistId": None,
        "title": title,
        "preferredName": names.NICKNAMES.get(first, first) if rng.random() < 0.3 else first,
        "firstName": first,
        "middleName": middle if rng.random() < 0.4 else "",
        "lastName": surname,
        "sex": "Female" if female else "Male",
        "consentedToMarketing": rng.choice(("NotAsked", "Consented", "Consented", "Refused")),
        "healthServiceIdentifier": _nhs_number(rng),
        "nationalInsuranceIdentifier": (
            f"QQ{rng.randint(0, 999999):06d}{rng.choice('ABCD')}" if adult else ""
        ),
        "defaultPayor": "Private",
        "patientHasAddress": rng.random() < 0.97,
        "patientHasEmail": has_email,
        "patientHasSms": has_sms,
    }


def _contact_details(rng: random.Random, patient: dict[str, Any]) -> dict[str, Any]:
    emails: list[str] = []
    phones: list[dict[str, str]] = []
    local = f"{patient['firstName']}.{patient['lastName']}".lower().replace("'", "")
    if patient["patientHasEmail"]:
        emails.append(f"{local}{rng.randint(1, 99)}@example.com")
    if patient["patientHasSms"]:
        phones.append(
            {
                "countryCode": "44",
                "phoneNumber": f"07700900{rng.randint(0, 999):03d}",
                "phoneType": "Mobile",
            }
        )
    if rng.random() < 0.4:
        phones.append(
            {
                "countryCode": "44",
                "phoneNumber": f"01134960{rng.randint(0, 999):03d}",
                "phoneType": rng.choice(("Home", "Work")),
            }
        )
    return {"emailAddresses": emails, "phoneNumbers": phones}


def _working_days() -> list[date]:
    days = []
    day = WINDOW_START
    while day <= WINDOW_END:
        if day.weekday() < 5:
            days.append(day)
        day += timedelta(days=1)
    return days


@dataclass(slots=True, eq=False)
class _Booking:
    """A planned appointment; `follows` is the first booking of a family pair."""

    start: datetime
    patient: dict[str, Any]
    practitioner: dict[str, Any]
    follows: _Booking | None = None


def _appointments(
    rng: random.Random, data: PracticeData, patients: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    days = _working_days()
    staff = data.practitioners
    households: dict[str, list[dict[str, Any]]] = {}
    for patient in patients:
        households.setdefault(patient["payingPatientId"], []).append(patient)
    taken: set[tuple[int, int, int]] = set()
    planned: list[_Booking] = []
    while len(planned) < APPOINTMENT_COUNT:
        day_index = rng.randrange(len(days))
        staff_index = rng.randrange(len(staff))
        slot = rng.randrange(_SLOTS_PER_DAY - 1)
        practitioner = staff[staff_index]
        start = datetime.combine(days[day_index], datetime.min.time(), UK_SUMMER) + timedelta(
            minutes=_FIRST_SLOT + slot * _SLOT_MINUTES
        )
        # Staff who left only have appointments before the reference date.
        if (day_index, staff_index, slot) in taken or (
            not practitioner["isActive"] and start >= REFERENCE_NOW
        ):
            continue
        patient = rng.choice(patients)
        taken.add((day_index, staff_index, slot))
        booking = _Booking(start, patient, practitioner)
        planned.append(booking)
        family = households[patient["payingPatientId"]]
        # Some bookings are family bookings: another member in the next slot.
        if (
            len(family) > 1
            and rng.random() < 0.08
            and (day_index, staff_index, slot + 1) not in taken
        ):
            member = rng.choice([p for p in family if p is not patient])
            taken.add((day_index, staff_index, slot + 1))
            later = start + timedelta(minutes=_SLOT_MINUTES)
            planned.append(_Booking(later, member, practitioner, follows=booking))
    planned.sort(key=lambda booking: booking.start)
    counter = rng.randint(0x4000, 0x9000)
    seen_patients: set[str] = set()
    records: dict[int, dict[str, Any]] = {}
    for booking in planned:
        first_visit = booking.patient["id"] not in seen_patients and rng.random() < 0.1
        seen_patients.add(booking.patient["id"])
        records[id(booking)] = _appointment(
            rng,
            data,
            appointment_id=record_id(counter, KIND_APPOINTMENT),
            start=booking.start,
            patient=booking.patient,
            practitioner=booking.practitioner,
            first_visit=first_visit,
        )
        counter += 1
    for booking in planned:
        if booking.follows is not None:
            _link_family(records[id(booking.follows)], records[id(booking)])
    return list(records.values())


def _link_family(primary: dict[str, Any], second: dict[str, Any]) -> None:
    primary["nextFamilyAppointmentId"] = second["id"]
    primary["familyAppointmentIds"] = [second["id"]]
    second["primaryFamilyAppointmentId"] = primary["id"]
    second["familyAppointmentIds"] = [primary["id"]]


def _status_for(rng: random.Random, start: datetime) -> str:
    if start.date() < REFERENCE_NOW.date() or start <= REFERENCE_NOW - timedelta(hours=1):
        roll = rng.random()
        return "Completed" if roll < 0.82 else "DidNotAttend" if roll < 0.9 else "Cancelled"
    if start <= REFERENCE_NOW:
        return rng.choice(("Arrived", "InSurgery"))
    roll = rng.random()
    if roll < 0.45:
        return "Confirmed"
    if roll < 0.9:
        return "Pending"
    return "Cancelled" if roll < 0.97 else "Unset"


def _appointment(
    rng: random.Random,
    data: PracticeData,
    *,
    appointment_id: str,
    start: datetime,
    patient: dict[str, Any],
    practitioner: dict[str, Any],
    first_visit: bool,
) -> dict[str, Any]:
    duration = rng.choice((10, 15, 20, 30, 30))
    status = _status_for(rng, start)
    created = start - timedelta(days=rng.randint(1, 90), minutes=rng.randint(0, 300))
    payor = next(p for p in data.payors if p["payorType"] == patient["defaultPayor"])
    location = data.locations[0] if rng.random() < 0.8 else data.locations[1]
    arrival = completion = cancellation = None
    actual = 0
    if status in ("Arrived", "InSurgery", "Completed"):
        arrival = start - timedelta(minutes=rng.randint(0, 15))
    if status == "Completed":
        actual = max(5, duration + rng.randint(-5, 10))
        completion = start + timedelta(minutes=actual)
    if status == "Cancelled":
        cancellation = start - timedelta(days=rng.randint(0, 10), hours=rng.randint(1, 8))
    updated = completion or cancellation or arrival
    return {
        "id": appointment_id,
        "providers": [
            {"id": practitioner["id"], "type": practitioner["role"], "name": practitioner["name"]}
        ],
        "patientId": patient["id"],
        "payorId": payor["id"],
        "location": {"id": location["id"], "code": location["code"], "name": location["name"]},
        "primaryFamilyAppointmentId": None,
        "nextFamilyAppointmentId": None,
        "familyAppointmentIds": [],
        "chairDurationMinutes": duration,
        "scheduledDurationMinutes": duration,
        "actualDurationMinutes": actual,
        "startDate": format_datetime(start),
        "endDate": format_datetime(start + timedelta(minutes=duration)),
        "isFirstVisit": first_visit,
        "arrivalDate": _optional_date(arrival),
        "completionDate": _optional_date(completion),
        "cancellationDate": _optional_date(cancellation),
        "status": status,
        "createdByUserId": rng.choice(data.users),
        "createdDate": format_datetime(created),
        "lastUpdatedByUserId": rng.choice(data.users) if updated else None,
        "lastUpdatedDate": _optional_date(updated),
    }


def _optional_date(value: datetime | None) -> str | None:
    return None if value is None else format_datetime(value)
