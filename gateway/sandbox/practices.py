"""Simulated practices: who is subscribed, how each one's on-premises server behaves, and a
log of what reached it.

In the real service every practice call is relayed by HSO's cloud to the practice's own
EXACT server, so availability and latency are per practice. Each `Practice` here stands for
that server: its `behaviour` decides what the relay answers, and `attempts` plus the bounded
request log show exactly which requests reached it (and which the relay refused before it:
`refused`, logged with `relayed: false`), which is what resilience tests need to assert on
(retries, breakers, bulkheads, requests the gateway answers itself); `peak_inflight` is the
most requests its server ever had at once (what a concurrency limit must bound). Its
`pms_version` is
judged against the minimum versions of `gateway.exact_api`.

Behaviours (what the relay answers):

    healthy   the endpoint's own answer, after `latency_s` (0 by default)
    slow      the same, after `latency_s` (the config's `slow_latency_s` unless set)
    offline   503 at once: the relay has no connection to the practice
    flaky     503 at once with probability `failure_rate` (seeded PRNG, so runs repeat),
              otherwise as healthy
    erroring  502 after `latency_s`: the practice's server failed the request
    timeout   504 after `latency_s`: the practice's server did not answer in time
    late      the practice carries the request out (a message is queued, an update applied)
              but its answer reaches the relay after the relay gave up: 504. The case that
              makes a repeated POST a duplicate side effect.

Practice ids are matched case-insensitively (assumption: the id is a SQL Server key, which
compares case-insensitively by default); the spelling used at creation is the one reported.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gateway.exact_api import PRACTICE_ID, PRACTICE_ID_PATTERN, Version, parse_version
from gateway.sandbox.config import SandboxConfig

BEHAVIOURS: tuple[str, ...] = (
    "healthy",
    "offline",
    "erroring",
    "slow",
    "flaky",
    "timeout",
    "late",
)
DEFAULT_PMS_VERSION = "13.860"
OLD_PMS_VERSION = "13.850"  # serves the API, but not PATCH of an appointment (13.856)
LEGACY_PMS_VERSION = "13.840"  # below 13.842: serves no part of the API
REQUEST_LOG_LIMIT = 1000
_DELAYED = ("slow", "timeout")


@dataclass(slots=True)
class Practice:
    """One practice as the relay sees it."""

    practice_id: str
    behaviour: str = "healthy"
    latency_s: float = 0.0
    failure_rate: float = 0.3
    subscribed: bool = True
    pms_version: str = DEFAULT_PMS_VERSION
    attempts: int = 0  # requests relayed to the practice's server
    refused: int = 0  # requests for it the relay refused first (401, 400 version, 403)
    inflight: int = 0  # requests at the practice's server right now
    peak_inflight: int = 0  # the most ever at once: what a concurrency limit must bound
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=REQUEST_LOG_LIMIT))

    @property
    def version(self) -> Version | None:
        """The EXACT version, comparable; None only if it is not a dotted version."""
        return parse_version(self.pms_version)

    def to_json(self) -> dict[str, Any]:
        """The control endpoint's view of the practice."""
        return {
            "id": self.practice_id,
            "behaviour": self.behaviour,
            "latency_s": self.latency_s,
            "failure_rate": self.failure_rate,
            "subscribed": self.subscribed,
            "pms_version": self.pms_version,
            "attempts": self.attempts,
            "inflight": self.inflight,
            "peak_inflight": self.peak_inflight,
        }


def default_practices(config: SandboxConfig) -> dict[str, Practice]:
    """The named practices every fresh sandbox starts with, keyed by upper-case id."""
    rate, slow = config.flaky_failure_rate, config.slow_latency_s
    practices = [
        Practice("UKTEST1", failure_rate=rate),
        Practice("UKTEST2", failure_rate=rate),
        Practice("WFEVAL", failure_rate=rate),
        Practice("UKOFFLINE1", behaviour="offline", failure_rate=rate),
        Practice("UKERROR1", behaviour="erroring", failure_rate=rate),
        Practice("UKSLOW1", behaviour="slow", latency_s=slow, failure_rate=rate),
        Practice("UKFLAKY1", behaviour="flaky", failure_rate=rate),
        Practice("UKTIMEOUT1", behaviour="timeout", latency_s=slow, failure_rate=rate),
        Practice("UKOLD1", pms_version=OLD_PMS_VERSION, failure_rate=rate),
        Practice("UKLEGACY1", pms_version=LEGACY_PMS_VERSION, failure_rate=rate),
        Practice("UKNOSUB1", subscribed=False, failure_rate=rate),
    ]
    return {p.practice_id.upper(): p for p in practices}


def _behaviour(value: Any) -> str:
    if value not in BEHAVIOURS:
        raise ValueError(f"behaviour must be one of {', '.join(BEHAVIOURS)}")
    return str(value)


def _latency(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError("latency_s must be a number >= 0")
    return float(value)


def _rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError("failure_rate must be a number within [0, 1]")
    return float(value)


def _subscribed(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("subscribed must be true or false")  # noqa: TRY004 - answered as 400
    return value


def _pms_version(value: Any) -> str:
    if parse_version(value) is None:
        raise ValueError("pms_version must be a dotted version such as 13.856 or 13.842.1")
    return str(value).strip()


_FIELDS = {
    "behaviour": _behaviour,
    "latency_s": _latency,
    "failure_rate": _rate,
    "subscribed": _subscribed,
    "pms_version": _pms_version,
}


def parse_practice_update(body: Any) -> dict[str, Any]:
    """Validate a control request for a practice; `ValueError` names the first problem."""
    if not isinstance(body, dict):
        raise ValueError("Expected a JSON object")  # noqa: TRY004 - answered as 400
    unknown = set(body) - set(_FIELDS)
    if unknown:
        raise ValueError(f"Unknown fields: {', '.join(sorted(unknown))}")
    return {name: _FIELDS[name](value) for name, value in body.items()}


def upsert_practice(
    practices: dict[str, Practice], practice_id: str, body: Any, config: SandboxConfig
) -> tuple[Practice, bool]:
    """Create or change a practice from a control request; return it and whether it is new.

    Everything is validated before anything changes, so a bad request leaves no trace.
    """
    if PRACTICE_ID.fullmatch(practice_id) is None:
        raise ValueError(f"practice id must match {PRACTICE_ID_PATTERN}")
    update = parse_practice_update(body)
    key = practice_id.upper()
    practice = practices.get(key)
    created = practice is None
    if practice is None:
        practice = Practice(practice_id, failure_rate=config.flaky_failure_rate)
        practices[key] = practice
    # A practice made slow (or timing out) without a latency gets the configured one,
    # otherwise "slow" would be indistinguishable from "healthy".
    if update.get("behaviour") in _DELAYED and "latency_s" not in update and not practice.latency_s:
        practice.latency_s = config.slow_latency_s
    for name, value in update.items():
        setattr(practice, name, value)
    return practice, created
