"""A faithful local simulator of the EXACT API and its OAuth2 identity server.

`build_sandbox_app()` returns one aiohttp application serving OIDC discovery and
`/connect/token`, every `/v1` endpoint of docs/exact-facts.md §2 over deterministic simulated
practices, and the `/_sandbox` control endpoints that let tests and demos inject faults.
Modules, one concept each:

    config        SandboxConfig, the frozen knobs (clocks injected)
    clients       built-in OAuth2 clients and the scope vocabulary
    tokens        HS256 JWTs: issue, verify (cached), revoke
    identity      client authentication and the client-credentials grant; identity modes
    oidc          the identity server's HTTP endpoints
    practices     simulated practices, behaviours, request logs
    dataset       deterministic practice data (patients, appointments, …)
    names         word lists for the data
    dates         ISO-8601 with mandatory offset
    paging        byte-budget pages and signed continuation tokens
    appointments  PATCH rules and status transitions
    messages      POST Contact validation
    routing       case-insensitive route matching
    endpoints     one handler per API operation (the routes: gateway.exact_api)
    api           the relay's checks in order, and the relay to the practice
    control       the /_sandbox endpoints
    state         SandboxState and its app key
    app           build_sandbox_app
"""

from gateway.sandbox.app import build_sandbox_app
from gateway.sandbox.clients import (
    ALL_SCOPES,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    LIMITED_CLIENT_ID,
    LIMITED_CLIENT_SECRET,
)
from gateway.sandbox.config import SandboxConfig
from gateway.sandbox.state import SANDBOX_STATE, SandboxState

__all__ = [
    "ALL_SCOPES",
    "DEMO_CLIENT_ID",
    "DEMO_CLIENT_SECRET",
    "LIMITED_CLIENT_ID",
    "LIMITED_CLIENT_SECRET",
    "SANDBOX_STATE",
    "SandboxConfig",
    "SandboxState",
    "build_sandbox_app",
]
