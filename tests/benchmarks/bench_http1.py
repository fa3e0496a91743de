"""Upstream client throughput: gateway.http1's UpstreamClient against aiohttp's ClientSession.

Both clients call the same bare aiohttp server (``web.Application`` with one route answering
``ok``), which runs in a child process so it never shares the clients' event loop. Each
client keeps 32 requests in flight for ``--duration`` seconds; the rounds are interleaved
(ours, aiohttp, ours, aiohttp...) and the best of ``--rounds`` is reported for each, with
their ratio. Every request reads its whole body and releases its connection, as the proxy
will. The aiohttp session is configured as the gateway configures it today.

    python tests/benchmarks/bench_http1.py --duration 5 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port, wait_http

from gateway.http1 import UpstreamClient

SERVER = """
import sys
from aiohttp import web

async def hello(request):
    return web.Response(text="ok")

app = web.Application()
app.router.add_get("/", hello)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


async def load(call: Callable[[], Awaitable[None]], duration: float, inflight: int) -> float:
    """Requests per second with ``inflight`` workers calling ``call`` back to back."""
    done = 0
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return done / (time.perf_counter() - started)


async def run(args: argparse.Namespace) -> int:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    try:
        await wait_http(url + "/")
        ours = UpstreamClient(url, connect_timeout=5)
        theirs = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        )

        async def call_ours() -> None:
            resp = await ours.request("GET", "/", [], header_timeout=10, read_timeout=10)
            await resp.read()
            resp.release()

        async def call_theirs() -> None:
            async with theirs.get(url + "/") as resp:
                await resp.read()

        best = {"gateway.http1": 0.0, "aiohttp ClientSession": 0.0}
        calls = {"gateway.http1": call_ours, "aiohttp ClientSession": call_theirs}
        for call in calls.values():  # warm-up: open the connections
            await load(call, 1.0, args.inflight)
        for round_no in range(1, args.rounds + 1):
            for name, call in calls.items():
                rate = await load(call, args.duration, args.inflight)
                best[name] = max(best[name], rate)
                print(f"round {round_no}  {name:<22} {rate:9.0f} req/s", flush=True)
        await theirs.close()
        await ours.close()
    finally:
        server.terminate()
        server.wait(10)
    print(
        f"\nbest of {args.rounds} interleaved rounds, {args.inflight} in flight,"
        f" {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
    )
    for name, rate in best.items():
        print(f"  {name:<22} {rate:9.0f} req/s")
    print(f"  ratio http1/aiohttp    {best['gateway.http1'] / best['aiohttp ClientSession']:9.2f}x")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=32)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
