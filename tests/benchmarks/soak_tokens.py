"""Token soak: steady traffic through the gateway for minutes, with short-lived tokens.

Shows, over a long run, that no request reaches EXACT with an expired token (the sandbox
answers 401 to one) and that token requests come at about 80% of the lifetime (48 s for the
default 60 s tokens), with jitter. It starts `exact-gateway sandbox` with the given token
lifetime and `exact-gateway serve` in front of it, sends GETs at a steady rate, then prints
the counts and the intervals between token refreshes, read from the gateway's own log.

    python tests/benchmarks/soak_tokens.py --duration 600 --lifetime 60 --rate 20

Exit status 1 if any request was not answered 200.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port, start_gateway, start_sandbox, stop


async def soak(args: argparse.Namespace) -> int:
    sandbox_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    logs = Path(tempfile.mkdtemp(prefix="soak-")) / "gateway.log"
    sandbox = await start_sandbox(sandbox_port, "--token-lifetime", str(args.lifetime))
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    statuses: dict[int, int] = {}
    gateway = await start_gateway(sandbox_port, proxy_port, admin_port, logs)
    try:
        url = f"http://127.0.0.1:{proxy_port}/v1/Practices/UKTEST1/details"
        interval = 1.0 / args.rate
        started = time.monotonic()
        next_at = started
        async with aiohttp.ClientSession() as client:
            while (now := time.monotonic()) < started + args.duration:
                if now < next_at:
                    await asyncio.sleep(next_at - now)
                next_at += interval
                async with client.get(url) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
            async with client.get(f"{sandbox_url}/_sandbox/identity") as resp:
                identity = await resp.json()
    finally:
        await stop(gateway, sandbox)

    refreshed = [
        datetime.fromisoformat(json.loads(line)["ts"].replace("Z", "+00:00"))
        for line in logs.read_text().splitlines()
        if '"event":"token_refreshed"' in line
    ]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(refreshed)]
    total = sum(statuses.values())
    print(
        f"token soak: {args.duration:.0f} s at {args.rate} req/s, token lifetime {args.lifetime} s"
    )
    print(f"requests: {total}, by status: {dict(sorted(statuses.items()))}")
    print(f"401 from EXACT (an expired or refused token reached it): {statuses.get(401, 0)}")
    print(f"token requests seen by the identity server: {identity['token_requests']['total']}")
    print(f"token refreshes logged by the gateway: {len(refreshed)}")
    if gaps:
        print(
            f"interval between refreshes: mean {statistics.mean(gaps):.1f} s,"
            f" min {min(gaps):.1f} s, max {max(gaps):.1f} s"
            f" (target {0.8 * args.lifetime:.1f} s ± {0.05 * args.lifetime:.1f} s)"
        )
    return 0 if statuses.keys() == {200} else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of traffic")
    parser.add_argument("--lifetime", type=int, default=60, help="sandbox token lifetime (s)")
    parser.add_argument("--rate", type=float, default=20, help="requests per second")
    return asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
