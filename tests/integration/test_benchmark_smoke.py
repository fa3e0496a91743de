"""The benchmark script, run for real on a tiny load: it must work, not be fast.

The upstream is forced to the sandbox and the load tool to the built-in generator so the test
needs neither nginx nor wrk; the figures are only checked for being present and positive,
never against a speed, because a shared 2-core machine makes any threshold flaky.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_proxy.py"
ROW = re.compile(
    r"^(direct|nginx_proxy|hello|gateway|fastfail)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
    r"\s+([\d.]+)\s+(\d+)\s+(\d+)$",
    re.MULTILINE,
)
RATIO = re.compile(
    r"^ratio (\w+)/(hello|direct): throughput ([\d.]+), p50 ([\d.]+), p99 ([\d.]+),"
    r" cpu ([\d.]+)$",
    re.MULTILINE,
)


def run_script(*args: str, timeout: float) -> tuple[int, str]:
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the script then stops the gateway and upstream it started.
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=15)
        pytest.fail(f"benchmark still running after {timeout}s:\n{out}")
    return process.returncode, out


@pytest.mark.slow
def test_benchmark_runs_and_prints_figures_and_ratios() -> None:
    """A 1 s run exits 0 and prints positive throughput, latencies, CPU per request and the
    ratios to hello and direct for every target."""
    code, out = run_script(
        "--duration=1",
        "--warmup=1",
        "--connections=4",
        "--rounds=1",
        "--upstream=sandbox",
        "--tool=builtin",
        timeout=45,
    )

    assert code == 0, out
    rows = {match[0]: match[1:] for match in ROW.findall(out)}
    # No nginx here (sandbox upstream): the nginx proxy target is left out.
    assert set(rows) == {"direct", "hello", "gateway", "fastfail"}, out
    for name, (requests, rps, p50, p99, cpu_us, non_2xx, errors) in rows.items():
        assert int(requests) > 0
        assert float(rps) > 0
        assert 0 < float(p50) <= float(p99)
        assert float(cpu_us) > 0
        assert int(errors) == 0
        # The fast-fail answers 503 circuit_open, every time; the rest answer 200.
        assert int(non_2xx) == (int(requests) if name == "fastfail" else 0)
    ratios = {(m[0], m[1]): m[2:] for m in RATIO.findall(out)}
    assert ("gateway", "hello") in ratios, out
    assert ("fastfail", "direct") in ratios, out
    assert all(float(value) > 0 for values in ratios.values() for value in values)
    assert "machine: " in out
    assert "tool: builtin" in out
    assert re.search(r"gateway RSS at end: [\d.]+ MiB", out), out
