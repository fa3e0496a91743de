"""A fleet under load: three gateway processes, with and without a shared Redis.

Starts the sandbox (``python -m gateway sandbox``) and a ``redis-server`` as child
processes, then runs the same closed-loop load twice against three gateway processes, each
caller sending its requests to the replicas in turn: first with every replica alone (no
``REDIS_URL``), then with all three sharing the Redis. The load is GETs of a healthy
practice's details plus a share of keyed POSTs (each a fresh ``Idempotency-Key``, so each
one is claimed in Redis). Prints req/s, p50 and p99 per run, and the errors (any non-2xx
answer or failed request).

    python tests/benchmarks/bench_fleet.py --duration 10 --connections 24

The load generator runs on this script's event loop (one core), so on a 2-core machine the
figures are the fleet's and the generator's together: compare the two runs, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port, start_gateway, start_sandbox, stop, wait_http

DETAILS = "/v1/Practices/UKTEST1/details"
CONTACT = "/v1/Practices/UKTEST1/Patients/000005ff-1300-0000-0000-008034ec7256/Contact"
MESSAGE = {"type": "Sms", "subject": "", "body": "Your appointment is tomorrow"}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def start_redis(directory: Path, port: int) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed (tests/system-deps.sh installs it)")
    arguments = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return subprocess.Popen(
        [server, *arguments, "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def load(ports: list[int], args: argparse.Namespace) -> tuple[float, list[float], int]:
    """(req/s, latencies in ms, errors) of ``args.duration`` seconds of closed-loop load."""
    timings: list[float] = []
    errors = 0
    turn = itertools.cycle(ports)
    deadline = time.monotonic() + args.duration
    every = max(1, round(1 / args.post_share)) if args.post_share > 0 else 0
    counter = itertools.count()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:

        async def caller() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                port = next(turn)
                started = time.perf_counter()
                try:
                    if every and next(counter) % every == 0:
                        headers = {"Idempotency-Key": uuid.uuid4().hex}
                        url = f"http://127.0.0.1:{port}{CONTACT}"
                        async with client.post(url, json=MESSAGE, headers=headers) as resp:
                            await resp.read()
                            ok = 200 <= resp.status < 300
                    else:
                        async with client.get(f"http://127.0.0.1:{port}{DETAILS}") as resp:
                            await resp.read()
                            ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                timings.append((time.perf_counter() - started) * 1000)
                errors += not ok

        began = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(args.connections)))
        elapsed = time.monotonic() - began
    return len(timings) / elapsed, timings, errors


async def run_fleet(
    sandbox_port: int, redis_url: str | None, directory: Path, args: argparse.Namespace
) -> tuple[float, list[float], int]:
    gateways, ports = [], []
    # A limit no run reaches (the fleet's share is limit // replicas): this measures the
    # cost of sharing, not the limit itself (tests/fleet/test_fleet_scale.py checks that).
    limit = args.connections * args.replicas
    extra = {"log_level": "warning", "practice_concurrency": str(limit)}
    if redis_url is not None:
        extra["redis_url"] = redis_url
        extra["redis_timeout_seconds"] = "0.25"
    try:
        for index in range(args.replicas):
            proxy_port, admin_port = free_port(), free_port()
            log = directory / f"gateway-{index}-{'redis' if redis_url else 'alone'}.log"
            gateways.append(await start_gateway(sandbox_port, proxy_port, admin_port, log, **extra))
            await wait_http(f"http://127.0.0.1:{admin_port}/readyz")
            ports.append(proxy_port)
        warm = argparse.Namespace(**{**vars(args), "duration": args.warmup})
        await load(ports, warm)
        return await load(ports, args)
    finally:
        await stop(*gateways)


async def main(args: argparse.Namespace) -> int:
    directory = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    sandbox_port, redis_port = free_port(), free_port()
    sandbox = await start_sandbox(sandbox_port)
    redis = start_redis(directory, redis_port)
    failed = 0
    try:
        await wait_http(f"http://127.0.0.1:{sandbox_port}/_sandbox/practices")
        print(
            f"{args.replicas} replicas, {args.connections} connections, {args.duration} s,"
            f" {args.post_share:.0%} keyed POSTs"
        )
        for name, url in (("alone", None), ("redis", f"redis://127.0.0.1:{redis_port}/0")):
            rate, timings, errors = await run_fleet(sandbox_port, url, directory, args)
            failed += errors
            print(
                f"{name:>6}: {rate:8.1f} req/s  p50 {percentile(timings, 0.5):6.1f} ms"
                f"  p99 {percentile(timings, 0.99):6.1f} ms  errors {errors}"
            )
    finally:
        redis.terminate()
        redis.wait(10)
        await stop(sandbox)
    return 1 if failed else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=24)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--post-share", type=float, default=0.1)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
