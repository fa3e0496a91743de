"""OAuth2 clients known to the simulated identity server, and the scope vocabulary.

The real identity server learns clients during partner onboarding; the sandbox has two
built-in ones so that a newcomer can get a token with no setup, and so that tests can see a
403 for a scope the client was never granted.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from gateway.exact_api import SCOPES

# Every scope the EXACT facts name; the demo client may request them all.
ALL_SCOPES: tuple[str, ...] = SCOPES

DEMO_CLIENT_ID = "sandbox-partner"
DEMO_CLIENT_SECRET = "sandbox-secret-not-for-production"  # noqa: S105 - published demo secret
LIMITED_CLIENT_ID = "sandbox-limited"
LIMITED_CLIENT_SECRET = "sandbox-limited-secret"  # noqa: S105 - published demo secret
LIMITED_SCOPES: tuple[str, ...] = ("productsubscription.get", "practice.get")


@dataclass(frozen=True, slots=True)
class Client:
    """A registered OAuth2 client and the scopes it may request."""

    client_id: str
    secret: str
    allowed_scopes: tuple[str, ...]

    def secret_matches(self, candidate: str) -> bool:
        """Compare secrets in constant time, as any credential check should."""
        return hmac.compare_digest(self.secret.encode(), candidate.encode())


BUILTIN_CLIENTS: tuple[Client, ...] = (
    Client(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, ALL_SCOPES),
    Client(LIMITED_CLIENT_ID, LIMITED_CLIENT_SECRET, LIMITED_SCOPES),
)
