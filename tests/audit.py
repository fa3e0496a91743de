"""The run-wide leak audit: every log line and metric exposition the test run produced.

Gateways started in-process log through the root logger (formatted here exactly as in
production, by :class:`gateway.logs.JsonFormatter`); gateways run as child processes hand
their stderr over line by line; every in-process gateway's metrics are exposed once more when
it stops. At the end of the session all of it is searched for the secrets the tests use, every
token issued (the scripted upstream's and any JWT), record ids (patients, appointments) and
query strings, and the run fails if one is found.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from gateway.logs import JsonFormatter

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# EXACT's record ids (patients, appointments, ...) are dashed uuids; the gateway's own request
# ids are undashed, so any dashed uuid in a gateway log line is a record id that leaked.
RECORD_ID = re.compile(
    r"\b[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\b"
)
QUERY_STRING = re.compile(r"[?&][A-Za-z_][A-Za-z0-9_]*=")
# aiohttp's access log is switched off in the gateway; what remains of it here comes from the
# tests' own servers (the sandbox, scripted upstreams), which are not under audit.
NOT_AUDITED = frozenset({"aiohttp.access"})


class _Collector(logging.Handler):
    def __init__(self, audit: RunAudit) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self._audit = audit

    def emit(self, record: logging.LogRecord) -> None:
        if record.name not in NOT_AUDITED:
            self._audit.log_lines.append(self.format(record))


@dataclass
class RunAudit:
    secrets: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)
    log_lines: list[str] = field(default_factory=list)
    expositions: list[str] = field(default_factory=list)

    def handler(self) -> logging.Handler:
        return _Collector(self)

    def leaks(self) -> list[str]:
        """Each finding as 'what: where', or nothing."""
        findings: list[str] = []
        for kind, texts in (("log", self.log_lines), ("metrics", self.expositions)):
            for text in texts:
                findings.extend(
                    f"{kind}: secret in {text[:200]!r}" for secret in self.secrets if secret in text
                )
                findings.extend(
                    f"{kind}: token in {text[:200]!r}" for token in self.tokens if token in text
                )
                for name, pattern in (
                    ("JWT", JWT),
                    ("record id", RECORD_ID),
                    ("query string", QUERY_STRING),
                ):
                    if pattern.search(text):
                        findings.append(f"{kind}: {name} in {text[:200]!r}")
        return findings


AUDIT = RunAudit()
