"""ISO-8601 date-times as the EXACT API takes them: an explicit UTC offset is mandatory.

The docs require an offset (`Z` allowed for UTC); the only public client sends PHP's
`DATE_ISO8601` form, whose offset has no colon (`+0000`). Both are accepted. A date-time
without an offset is rejected, because the API cannot know which zone the caller meant.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

_ISO = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ]"
    r"(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,7}))?)?"
    r"(?P<offset>[Zz]|[+-]\d{2}:?\d{2})"
)


class DateError(ValueError):
    """A date-time that the API would refuse with 400."""


def parse_offset_datetime(text: str) -> datetime:
    """Parse `text` into an aware datetime, or raise `DateError` naming the problem."""
    match = _ISO.fullmatch(text.strip())
    if match is None:
        raise DateError(
            f"'{text}' is not an ISO-8601 date-time with a UTC offset "
            "(for example 2024-05-01T09:00:00+01:00 or 2024-05-01T08:00:00Z)"
        )
    offset_text = match["offset"]
    if offset_text in ("Z", "z"):
        offset = UTC
    else:
        sign = -1 if offset_text[0] == "-" else 1
        digits = offset_text[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 14 or minutes > 59:
            raise DateError(f"'{text}' has an out-of-range UTC offset")
        offset = timezone(sign * timedelta(hours=hours, minutes=minutes))
    # .NET allows seven fractional digits; Python keeps six, which is ample here.
    micro = int((match["fraction"] or "0")[:6].ljust(6, "0"))
    try:
        return datetime.fromisoformat(match["date"]).replace(
            hour=int(match["hour"]),
            minute=int(match["minute"]),
            second=int(match["second"] or 0),
            microsecond=micro,
            tzinfo=offset,
        )
    except ValueError as exc:
        raise DateError(f"'{text}' is not a valid date-time: {exc}") from exc


def format_datetime(value: datetime) -> str:
    """Render an aware datetime the way the sandbox's responses carry them."""
    return value.isoformat(timespec="seconds")
