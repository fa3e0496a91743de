"""The simulator on a listener of its own (``exact-gateway sandbox``, or in-process for
``serve --environment sandbox``): the sandbox's own server wiring, apart from the gateway's."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from aiohttp import web

from gateway.sandbox.app import build_sandbox_app
from gateway.sandbox.config import SandboxConfig


@dataclass
class SandboxServer:
    runner: web.AppRunner
    url: str

    @classmethod
    async def start(cls, host: str, port: int, token_lifetime: int) -> SandboxServer:
        runner = web.AppRunner(
            build_sandbox_app(SandboxConfig(token_lifetime_s=token_lifetime)), access_log=None
        )
        await runner.setup()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=1024)
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        bound_host, bound_port = sock.getsockname()[:2]
        return cls(runner, f"http://{bound_host}:{bound_port}")

    async def stop(self) -> None:
        await self.runner.cleanup()
