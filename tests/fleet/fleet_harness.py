"""Three (or more) gateway processes, one real ``redis-server``, the sandbox as EXACT.

Shared by the fleet-scale tests and ``tests/benchmarks/bench_fleet.py``: each gateway is a
child process (``python -m gateway serve``) in front of a sandbox listening on a real
loopback port, its admin port read for ``/status`` and ``/breakers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.fakes import GatewayProcess, spawn_gateway

DETAILS = "/v1/Practices/{}/details"
CONTACT = "/v1/Practices/{}/Patients/000005ff-1300-0000-0000-008034ec7256/Contact"
MESSAGE = {"type": "Sms", "subject": "", "body": "Your appointment is tomorrow"}


def fleet_env(sandbox_url: str, redis_url: str | None, **extra: str) -> dict[str, str]:
    """Settings of one replica: fast heartbeats and breakers, a Redis time-out wide enough
    for a loaded 2-core machine (production's 50 ms is for a cluster network)."""
    env = {
        "EXACT_GATEWAY_API_URL": sandbox_url,
        "EXACT_GATEWAY_SHUTDOWN_GRACE_SECONDS": "0",
        "EXACT_GATEWAY_DRAIN_SECONDS": "2",
        "EXACT_GATEWAY_REDIS_TIMEOUT_SECONDS": "0.25",
        "EXACT_GATEWAY_REDIS_HEARTBEAT_SECONDS": "0.2",
        "EXACT_GATEWAY_RETRY_BACKOFF_BASE_SECONDS": "0.01",
        "EXACT_GATEWAY_RETRY_BACKOFF_MAX_SECONDS": "0.05",
        "EXACT_GATEWAY_BREAKER_OPEN_JITTER": "0",
    }
    if redis_url is not None:
        env["EXACT_GATEWAY_REDIS_URL"] = redis_url
    env.update({f"EXACT_GATEWAY_{key.upper()}": value for key, value in extra.items()})
    return env


@dataclass
class Fleet:
    """Replicas started by :meth:`spawn`, all stopped by :meth:`close`."""

    client: aiohttp.ClientSession
    replicas: list[GatewayProcess] = field(default_factory=list)

    async def spawn(self, env: dict[str, str], count: int = 1) -> list[GatewayProcess]:
        started = [await spawn_gateway(env, "--environment", "sandbox") for _ in range(count)]
        self.replicas += started
        return started

    async def stop(self, replica: GatewayProcess) -> None:
        """SIGTERM and wait: the replica drains, saves its state and leaves the fleet."""
        if replica.process.returncode is None:
            replica.process.terminate()
            await replica.wait()

    async def close(self) -> None:
        for replica in self.replicas:
            if replica.process.returncode is None:
                replica.process.kill()
                with contextlib.suppress(Exception):
                    await replica.wait()
            if replica.pump is not None:
                replica.pump.cancel()
                with contextlib.suppress(BaseException):
                    await replica.pump

    async def admin(self, replica: GatewayProcess, path: str) -> Any:
        url = f"http://127.0.0.1:{replica.admin_port}{path}"
        async with self.client.get(url) as response:
            assert response.status == 200, path
            return await response.json()

    async def fleet_status(self, replica: GatewayProcess) -> dict[str, Any]:
        status: dict[str, Any] = (await self.admin(replica, "/status"))["fleet"]
        return status

    async def breaker(self, replica: GatewayProcess, practice_id: str) -> dict[str, Any] | None:
        """The replica's breaker for ``practice_id`` if it is not closed, else None."""
        for entry in (await self.admin(replica, "/breakers"))["practices"]:
            if entry["practice_id"] == practice_id.upper():
                return dict(entry)
        return None

    async def get(self, replica: GatewayProcess, path: str) -> tuple[int, str | None]:
        """(status, X-Gateway-Error) of one GET through ``replica``."""
        url = f"http://127.0.0.1:{replica.proxy_port}{path}"
        async with self.client.get(url) as response:
            await response.read()
            return response.status, response.headers.get("X-Gateway-Error")

    async def post(
        self, replica: GatewayProcess, path: str, key: str
    ) -> tuple[int, dict[str, str]]:
        url = f"http://127.0.0.1:{replica.proxy_port}{path}"
        headers = {"Idempotency-Key": key}
        async with self.client.post(url, json=MESSAGE, headers=headers) as response:
            await response.read()
            return response.status, dict(response.headers)


async def until(check: Callable[[], Any], *, within: float = 30.0) -> None:
    """Wait until the coroutine function ``check`` returns true (polled every 20 ms)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
