"""Practice versions: which EXACT each practice runs, and whether a route can be served.

EXACT refuses a request a practice's server is too old for (the whole API needs 13.842,
``PATCH`` of an appointment 13.856), but only after relaying it to that server. A gateway
that knows the practice's ``pmsVersion`` can answer such a request itself (400
``practice_version_too_old``) and spare the practice the round trip.

Pure and bounded: versions learnt (from GetPracticeDetails answers passing through, or from
the gateway's own look-ups) are kept for ``ttl`` seconds, at most ``max_entries`` of them
(least recently learnt out first), with an injected monotonic clock. An unknown or expired
version admits the request (fail open: the gateway never refuses on a guess) and asks for a
look-up; look-ups are single-flight per practice, and a failed one is not repeated for
``retry_after_failure`` seconds, so an offline practice is not asked on every request.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import PracticeVersionTooOld
from gateway.exact_api import Version, parse_version
from gateway.expiring import ExpiringMap

# A GetPracticeDetails answer is a few hundred bytes; anything far larger is not parsed.
DETAILS_MAX_BYTES = 64 * 1024
DETAILS_TEMPLATE = "/v1/Practices/{practiceId}/details"


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    ttl: float = 3600.0
    max_entries: int = 10000
    retry_after_failure: float = 60.0


def version_from_details(body: bytes) -> str | None:
    """``pmsVersion`` of a GetPracticeDetails JSON body, or None for anything else.

    Bounded (bodies over :data:`DETAILS_MAX_BYTES` are not parsed) and quiet: a hostile body
    yields None, never an exception, and nothing of it is ever logged.
    """
    if len(body) > DETAILS_MAX_BYTES:
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    version = parse_version(document.get("pmsVersion"))
    return None if version is None else str(version)


class VersionBook:
    """Known versions per practice (case-insensitive ids), and the look-ups they need."""

    def __init__(self, policy: VersionPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self._clock = clock
        self._known: ExpiringMap[str, Version] = ExpiringMap(policy.max_entries, policy.ttl, clock)
        self._failed: ExpiringMap[str, bool] = ExpiringMap(
            policy.max_entries, policy.retry_after_failure, clock
        )
        self._looking: set[str] = set()
        # Versions learnt in the last quarter of their time to live: a details answer for
        # such a practice is not parsed again (every GetPracticeDetails call would otherwise
        # pay a JSON parse), and an upgrade is still seen well within the time to live.
        self._recent: ExpiringMap[str, bool] = ExpiringMap(
            policy.max_entries, policy.ttl / 4, clock
        )

    def __len__(self) -> int:
        return len(self._known)

    def get(self, practice_id: str) -> Version | None:
        return self._known.get(practice_id.upper())

    def learn(self, practice_id: str, text: str | None) -> Version | None:
        """Remember a version seen in the practice's details (restarts its time to live)."""
        version = parse_version(text)
        key = practice_id.upper()
        if version is not None:
            self._known[key] = version
            self._recent[key] = True
            self._failed.pop(key)
        return version

    def learnt_recently(self, practice_id: str) -> bool:
        return practice_id.upper() in self._recent

    def forget(self, practice_id: str) -> None:
        self._known.pop(practice_id.upper())

    def check(self, minimum: Version | None, practice_id: str) -> PracticeVersionTooOld | None:
        """The refusal for a route needing ``minimum`` at this practice, if its known version
        is too old."""
        if minimum is None:
            return None  # asked first: a route without a minimum needs no look-up at all
        version = self.get(practice_id)
        if version is None or version >= minimum:
            return None
        return too_old(practice_id, version, minimum)

    # -- look-ups ----------------------------------------------------------------------------

    def wants_lookup(self, practice_id: str) -> bool:
        """Claim the look-up of an unknown version: True once until :meth:`lookup_done`."""
        key = practice_id.upper()
        if key in self._known or key in self._looking or key in self._failed:
            return False
        self._looking.add(key)
        return True

    def lookup_done(self, practice_id: str, text: str | None) -> None:
        key = practice_id.upper()
        self._looking.discard(key)
        if self.learn(practice_id, text) is None:
            self._failed[key] = True

    @property
    def lookups_in_flight(self) -> int:
        return len(self._looking)


def too_old(practice_id: str, version: Version, minimum: Version) -> PracticeVersionTooOld:
    return PracticeVersionTooOld(
        f"practice {practice_id} runs EXACT {version}; this request needs {minimum} or later,"
        " so EXACT would refuse it",
        practice_id=practice_id,
        version=str(version),
        minimum=str(minimum),
    )
