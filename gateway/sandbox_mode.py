"""The gateway in the sandbox environment: demo credentials, and the simulator started
in-process when no sandbox URL is given (``serve --environment sandbox``, ``check``), or
alone (``exact-gateway sandbox``).

This is the gateway's use of the simulator; the simulator itself (``gateway/sandbox/``)
imports nothing from the gateway but the EXACT facts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from pydantic import SecretStr

from gateway.lifecycle import until_signalled
from gateway.sandbox import ALL_SCOPES, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from gateway.sandbox.server import SandboxServer
from gateway.settings import Environment, SandboxServerSettings, Settings

log = logging.getLogger("exact_gateway.app")


def with_sandbox_defaults(settings: Settings, api_url: str | None = None) -> Settings:
    """Fill in the sandbox's demo credentials and scopes where none were configured."""
    update: dict[str, object] = {}
    if api_url is not None:
        update["api_url"] = api_url
    if settings.client_id is None:
        update["client_id"] = DEMO_CLIENT_ID
    if settings.client_secret is None and settings.client_secret_file is None:
        update["client_secret"] = SecretStr(DEMO_CLIENT_SECRET)
    if not settings.scopes:
        update["scopes"] = ALL_SCOPES
    return settings.model_copy(update=update)


@contextlib.asynccontextmanager
async def sandbox_for(settings: Settings) -> AsyncIterator[Settings]:
    """Yield settings ready to use, with an in-process sandbox running if they ask for one."""
    if settings.environment is not Environment.SANDBOX:
        yield settings
        return
    if not settings.uses_inprocess_sandbox:
        yield with_sandbox_defaults(settings)
        return
    sandbox = await SandboxServer.start("127.0.0.1", 0, settings.sandbox_token_lifetime_seconds)
    log.warning(
        "SANDBOX MODE: every answer comes from the built-in EXACT simulator; the data is"
        " simulated and no real practice is contacted",
        extra={"fields": {"event": "sandbox", "sandbox_url": sandbox.url}},
    )
    try:
        yield with_sandbox_defaults(settings, sandbox.url)
    finally:
        await sandbox.stop()


async def run_sandbox(settings: SandboxServerSettings) -> None:
    """``exact-gateway sandbox``: the simulator alone, until SIGTERM or SIGINT."""
    sandbox = await SandboxServer.start(
        settings.host, settings.port, settings.token_lifetime_seconds
    )
    log.warning(
        "EXACT sandbox listening: simulated data, demo client id and secret in the README",
        extra={"fields": {"event": "sandbox", "sandbox_url": sandbox.url}},
    )
    await until_signalled()
    await sandbox.stop()
