"""The caller edge's bounds: how long each phase may take and how much a caller may hold.

One frozen value (:class:`CallerLimits`) built from the settings and handed to each listener,
plus the fixed parser limits and grace periods that are not settings, each with its reason.
:func:`connection_cap` derives the connection limit that fits the process's descriptor limit,
because past that limit ``accept()`` fails for every listener at once, the admin port too.
"""

from __future__ import annotations

from dataclasses import dataclass

# Per-field and field-count limits of the parser (aiohttp's own defaults, kept): a single
# field never needs more, and the total is bounded by max_head_bytes anyway.
MAX_FIELD_BYTES = 8190
MAX_HEADERS = 128
# Complete requests a connection may have waiting behind the one being answered. llhttp
# parses a whole read (up to 256 KiB) at once, which could hold thousands of tiny pipelined
# requests as objects; past this bound parsing stops, those waiting are answered and the
# connection closes (a pipelining client retries what was not answered). Browsers and HTTP
# libraries pipeline a handful at most, if at all.
MAX_PIPELINED = 64
# How long aiohttp keeps reading (and discarding) a body the handler did not want, so the
# caller can read the answer before the connection closes; the body-idle limit still applies.
LINGER_SECONDS = 5.0
# After a refusal written before the head was complete, incoming bytes are read and dropped
# this long so the caller can read the answer (instead of meeting a reset).
REFUSAL_LINGER_SECONDS = 2.0
# At the start of a drain, keep-alive connections idle at least this long are closed; more
# recently used ones get Connection: close on their next answer instead.
DRAIN_QUIET_SECONDS = 1.0
# File descriptors kept free for the process itself (listeners, event loop, log pipes, the
# identity server's connections) when the connection cap is derived from RLIMIT_NOFILE.
RESERVED_FDS = 64


@dataclass(frozen=True, slots=True)
class CallerLimits:
    """The caller edge's bounds (settings ``REQUEST_HEAD_TIMEOUT_SECONDS`` and friends)."""

    head_timeout: float = 10.0
    body_idle: float = 15.0
    write_idle: float = 30.0
    keepalive_idle: float = 120.0
    max_head_bytes: int = 32768
    max_target_bytes: int = 8192
    max_connections: int = 1024


def connection_cap(wanted: int, fd_limit: int, admin_connections: int) -> int:
    """Caller connections the proxy port may hold without running out of file descriptors.

    Each caller connection can need a second descriptor for its upstream connection, and the
    admin port and the process keep their own; past the descriptor limit ``accept()`` fails
    for every listener at once (and asyncio logs each failure), so the cap stays below it.
    """
    affordable = (fd_limit - admin_connections - RESERVED_FDS) // 2
    return max(1, min(wanted, affordable))
