"""Builds the sandbox: identity server, simulated API and control endpoints on one app.

One port serves everything so that a test, a demo or the gateway's `sandbox` environment
needs a single address for both the authority and the API.
"""

from __future__ import annotations

from aiohttp import web

from gateway.sandbox.api import handle_api
from gateway.sandbox.config import SandboxConfig
from gateway.sandbox.control import add_control_routes
from gateway.sandbox.oidc import add_identity_routes
from gateway.sandbox.state import SANDBOX_STATE, SandboxState


def build_sandbox_app(config: SandboxConfig | None = None) -> web.Application:
    """A fresh, independent sandbox application."""
    app = web.Application()
    app[SANDBOX_STATE] = SandboxState.create(config or SandboxConfig())
    add_identity_routes(app)
    add_control_routes(app)
    # Registered last: the API's own case-insensitive matcher takes every other path.
    app.router.add_route("*", "/{tail:.*}", handle_api)
    return app
