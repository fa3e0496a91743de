"""ISO-8601 parsing for the sandbox: an offset is mandatory, in any of its spellings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.sandbox.dates import DateError, format_datetime, parse_offset_datetime


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01T08:00:00Z",
        "2024-05-01T08:00:00+00:00",
        "2024-05-01T08:00:00+0000",
        "2024-05-01T09:00:00+01:00",
        "2024-05-01T09:00:00+0100",
        "2024-05-01T03:00:00-05:00",
        "2024-05-01T08:00Z",
        "2024-05-01T08:00:00.0000000Z",
    ],
)
def test_offset_spellings_parse_to_the_same_instant(text: str) -> None:
    """Z, +00:00, +0000 and other offsets all name the intended instant."""
    assert parse_offset_datetime(text) == datetime(2024, 5, 1, 8, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01T08:00:00",
        "2024-05-01",
        "2024-05-01T08:00:00 00:00",
        "yesterday",
        "2024-13-01T08:00:00Z",
        "2024-02-30T08:00:00Z",
        "2024-05-01T08:00:00+15:00",
        "",
    ],
)
def test_dates_without_offset_or_invalid_are_refused(text: str) -> None:
    """A missing offset, an impossible date or junk raises DateError."""
    with pytest.raises(DateError):
        parse_offset_datetime(text)


def test_format_keeps_the_offset() -> None:
    """Formatting is ISO-8601 to the second with the value's own offset."""
    value = datetime(2024, 5, 1, 9, 0, 30, 123, tzinfo=timezone(timedelta(hours=1)))
    assert format_datetime(value) == "2024-05-01T09:00:30+01:00"
