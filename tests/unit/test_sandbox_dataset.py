"""Deterministic, realistic and consistent practice data."""

from __future__ import annotations

import re
from collections import Counter

from gateway.sandbox.dataset import APPOINTMENT_STATUSES, PracticeData

PATIENT_ID = re.compile(r"[0-9a-f]{8}-1300-0000-0000-008034ec7256")


def test_same_seed_same_bytes_and_other_practice_other_data() -> None:
    """Two builds with one seed are identical; another practice or seed differs."""
    a = PracticeData("UKTEST1", 7)
    b = PracticeData("uktest1", 7)
    assert a.records.patients_body == b.records.patients_body
    assert [x.body for x in a.records.ordered] == [x.body for x in b.records.ordered]
    assert PracticeData("UKTEST2", 7).records.patients_body != a.records.patients_body
    assert PracticeData("UKTEST1", 8).records.patients_body != a.records.patients_body


def test_sizes_and_id_patterns() -> None:
    """About 300 patients and 500 appointments, with EXACT-style ids."""
    data = PracticeData("WFEVAL", 20240501)
    records = data.records
    assert len(records.patients) == 300
    assert len(records.appointments) == 500
    assert all(PATIENT_ID.fullmatch(p["id"]) for p in records.patients)
    assert len({p["id"] for p in records.patients}) == 300
    assert 4 <= len(data.practitioners) <= 6
    assert len(data.locations) == 2


def test_foreign_keys_are_consistent() -> None:
    """Appointments point at existing patients, practitioners, payors and locations."""
    data = PracticeData("UKTEST2", 20240501)
    records = data.records
    location_ids = {loc["id"] for loc in data.locations}
    for appointment in records.ordered:
        record = appointment.data
        assert record["patientId"] in records.patients_by_id
        assert record["payorId"] in data.payors_by_id
        assert record["location"]["id"] in location_ids
        for provider in record["providers"]:
            assert provider["id"] in data.practitioners_by_id
        for linked in record["familyAppointmentIds"]:
            assert linked in records.appointments
        assert record["endDate"] > record["startDate"]
    for patient in records.patients:
        assert patient["payingPatientId"] in records.patients_by_id
        assert patient["defaultDentistId"] in data.practitioners_by_id


def test_statuses_are_the_current_set_and_varied() -> None:
    """Only current AppointmentStatus values appear, several of them."""
    statuses = Counter(a.data["status"] for a in PracticeData("UKTEST1", 1).records.ordered)
    assert set(statuses) <= set(APPOINTMENT_STATUSES)
    assert {"Completed", "Pending", "Confirmed", "Cancelled"} <= set(statuses)


def test_nhs_numbers_are_test_range_with_valid_check_digit() -> None:
    """Health service ids are in the 999 test range with a correct modulus-11 digit."""
    for patient in PracticeData("UKTEST1", 1).records.patients:
        digits = [int(c) for c in patient["healthServiceIdentifier"]]
        assert digits[:3] == [9, 9, 9]
        check = 11 - sum(d * (10 - i) for i, d in enumerate(digits[:9])) % 11
        assert digits[9] == (0 if check == 11 else check)


def test_listing_order_is_by_start_then_id() -> None:
    """The ordered index is sorted, so keyset paging has a total order."""
    ordered = PracticeData("UKTEST1", 1).records.ordered
    assert [a.sort_key for a in ordered] == sorted(a.sort_key for a in ordered)


def test_details_carry_every_model_field() -> None:
    """Practice details have every field of docs/exact-facts.md §5.1."""
    details = PracticeData("WFEVAL", 1).details
    expected = {
        "practiceId", "practiceName", "installationId", "organizationId", "organizationName",
        "address", "phoneNumber", "emailAddress", "websiteAddress", "country",
        "countrySubdivision", "brandingLogoUrl", "supportedPayors", "openingHours",
        "practiceTimezoneUtcOffsetMinutes", "pmsVersion", "pmsDisplayVersion", "updatedOn",
        "locations",
    }  # fmt: skip
    assert expected <= set(details)
    assert details["practiceId"] == "WFEVAL"
