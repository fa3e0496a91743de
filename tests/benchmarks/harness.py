"""Shared pieces of the benchmark scripts: free ports, waiting for a server, child processes
for the sandbox and the gateway (each in its own process, so the load generator never shares
their event loop)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as client:
        while time.monotonic() < deadline:
            try:
                async with client.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"not answering 200: {url}")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EXACT_GATEWAY_")}


async def start_sandbox(port: int, *args: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "sandbox",
        "--port",
        str(port),
        *args,
        env=clean_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await wait_http(f"http://127.0.0.1:{port}/.well-known/openid-configuration")
    return process


async def start_gateway(
    sandbox_port: int, proxy_port: int, admin_port: int, log: Path, **settings: str
) -> asyncio.subprocess.Process:
    env = clean_env() | {
        "EXACT_GATEWAY_ENVIRONMENT": "sandbox",
        "EXACT_GATEWAY_API_URL": f"http://127.0.0.1:{sandbox_port}",
        "EXACT_GATEWAY_PORT": str(proxy_port),
        "EXACT_GATEWAY_ADMIN_PORT": str(admin_port),
        "EXACT_GATEWAY_ADMIN_HOST": "127.0.0.1",
    }
    env |= {f"EXACT_GATEWAY_{key.upper()}": value for key, value in settings.items()}
    with log.open("w") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
        )
    await wait_http(f"http://127.0.0.1:{admin_port}/readyz")
    return process


async def stop(*processes: asyncio.subprocess.Process) -> None:
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        await process.wait()
