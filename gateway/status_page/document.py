"""What ``GET /status`` answers, the data the status page draws: :func:`status_document`
builds it from the token status, the breakers and the :mod:`gateway.history`. Nothing in it is
secret: no token, no secret, no client id, no path or query string; practice ids only for
breakers that are not closed, as in the metrics.
"""

from __future__ import annotations

from typing import Any

# The page lists at most this many failing practices (newest first); counts cover the rest.
PRACTICES_SHOWN = 50

_TOKEN_FIELDS = (
    "usable",
    "has_token",
    "expires_in_seconds",
    "usable_for_seconds",
    "age_seconds",
    "next_refresh_in_seconds",
    "retry_in_seconds",
    "refresh_count",
    "consecutive_failures",
    "credentials_refused",
    "last_error",
)
_PRACTICE_FIELDS = (
    "practice_id",
    "state",
    "opened_at_unix",
    "next_probe_in_seconds",
    "consecutive_failures",
    "reopenings",
)


def status_document(
    *,
    version: str,
    environment: str,
    ready: bool,
    draining: bool,
    token: dict[str, Any],
    breakers: dict[str, Any],
    history: dict[str, Any],
    inflight: int,
    troubled: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``GET /status`` answers: a safe subset of /token and /breakers, and the history
    (:meth:`gateway.history.History.snapshot`)."""
    upstream = breakers["upstream"]
    # Newest openings first: at 3 a.m. what just broke matters more than what broke at noon.
    practices = sorted(
        breakers["practices"], key=lambda entry: -(entry.get("opened_at_unix") or 0.0)
    )
    return {
        "version": version,
        "environment": environment,
        "ready": ready,
        "draining": draining,
        "inflight": inflight,
        "token": {key: token.get(key) for key in _TOKEN_FIELDS}
        | {"events": history["token_events"]},
        "breakers": {
            "upstream": {
                "state": upstream["state"],
                "cause": upstream.get("cause"),
                "opened_at_unix": upstream.get("opened_at_unix"),
                "next_probe_in_seconds": upstream.get("next_probe_in_seconds"),
                "events": history["upstream_breaker_events"],
            },
            "practices": [
                {key: entry.get(key) for key in _PRACTICE_FIELDS}
                for entry in practices[:PRACTICES_SHOWN]
            ],
            "practices_not_shown": max(0, len(practices) - PRACTICES_SHOWN),
            "counts": breakers["counts"],
        },
        "traffic": history["traffic"],
        "practices": troubled
        if troubled is not None
        else {"rows": [], "not_shown": 0, "states": {}, "paused": []},
    }
