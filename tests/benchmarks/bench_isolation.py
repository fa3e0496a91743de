"""Isolation: does an offline practice, hammered by many callers, slow a healthy one down?

Starts the sandbox and the gateway as child processes, measures a healthy practice's latency
alone (the baseline), then again while N callers keep calling an offline practice (each
about 20 times a second), in the same run, and prints both with their ratio, plus what the
offline callers were answered. Also reports how fast an open breaker answers.

    python tests/benchmarks/bench_isolation.py --callers 200 --samples 500
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port, start_gateway, start_sandbox, stop


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def latencies(client: aiohttp.ClientSession, url: str, n: int) -> tuple[list[float], int]:
    timings, errors = [], 0
    for _ in range(n):
        started = time.perf_counter()
        async with client.get(url) as resp:
            await resp.read()
            errors += resp.status != 200
        timings.append((time.perf_counter() - started) * 1000)
    return timings, errors


async def run(args: argparse.Namespace) -> int:
    sandbox_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    sandbox = await start_sandbox(sandbox_port)
    log = Path(tempfile.mkdtemp(prefix="isolation-")) / "gateway.log"
    gateway = await start_gateway(sandbox_port, proxy_port, admin_port, log, log_level="warning")
    base = f"http://127.0.0.1:{proxy_port}/v1/Practices"
    answers: Counter[str] = Counter()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
            await latencies(client, f"{base}/UKTEST1/details", 50)  # warm-up
            baseline, _ = await latencies(client, f"{base}/UKTEST1/details", args.samples)
            stopping = asyncio.Event()

            async def offline_caller() -> None:
                while not stopping.is_set():
                    async with client.get(f"{base}/UKOFFLINE1/details") as resp:
                        await resp.read()
                        answers[resp.headers.get("X-Gateway-Error", f"EXACT {resp.status}")] += 1
                    await asyncio.sleep(0.05)

            callers = [asyncio.create_task(offline_caller()) for _ in range(args.callers)]
            await asyncio.sleep(1.0)  # let the breaker open and the callers settle
            loaded, errors = await latencies(client, f"{base}/UKTEST1/details", args.samples)
            open_answers, _ = await latencies(client, f"{base}/UKOFFLINE1/details", 100)
            stopping.set()
            await asyncio.gather(*callers)
    finally:
        await stop(gateway, sandbox)
    print(
        f"isolation: {args.callers} callers on offline UKOFFLINE1, healthy UKTEST1 sampled"
        f" {args.samples} times, sequentially"
    )
    for name, values in (("baseline", baseline), ("under load", loaded)):
        print(
            f"  {name:<10} p50 {statistics.median(values):6.2f} ms"
            f"  p99 {percentile(values, 0.99):6.2f} ms"
        )
    print(
        f"  ratio under load / baseline: p50"
        f" {statistics.median(loaded) / statistics.median(baseline):.2f}x, p99"
        f" {percentile(loaded, 0.99) / percentile(baseline, 0.99):.2f}x"
    )
    print(f"  healthy practice errors under load: {errors}")
    print(f"  offline callers were answered: {dict(answers)}")
    print(
        f"  open breaker answers (circuit_open): p50 {statistics.median(open_answers):.2f} ms,"
        f" p99 {percentile(open_answers, 0.99):.2f} ms (client-side, loopback)"
    )
    return 1 if errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=200)
    parser.add_argument("--samples", type=int, default=500)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
