"""Shared pieces of the observability tests: the real tools, and a gateway whose exposition
holds every metric family (driven through the sandbox with real faults)."""

from __future__ import annotations

import shutil
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from gateway.app import Gateway
from tests.fakes import SandboxFactory, SandboxGatewayFactory, admin_url, proxy_url

CONFIG = Path(__file__).resolve().parents[2] / "config"
RULES = CONFIG / "prometheus" / "exact-gateway-rules.yml"
RULES_TESTS = CONFIG / "prometheus" / "exact-gateway-rules.test.yml"
PROMETHEUS_CONFIG = CONFIG / "prometheus" / "prometheus.yml"
DASHBOARD = CONFIG / "grafana" / "exact-gateway-dashboard.json"

# The families of the contract (README "Metrics"), without the suffixes
# the exposition adds to counters and histograms.
CONTRACT_FAMILIES = (
    "exact_gateway_requests_total",
    "exact_gateway_request_duration_seconds",
    "exact_gateway_inflight_requests",
    "exact_gateway_upstream_attempts_total",
    "exact_gateway_upstream_attempt_duration_seconds",
    "exact_gateway_retries_total",
    "exact_gateway_retries_skipped_total",
    "exact_gateway_rejected_requests_total",
    "exact_gateway_circuit_breaker_state",
    "exact_gateway_circuit_breakers",
    "exact_gateway_upstream_circuit_breaker_state",
    "exact_gateway_circuit_breaker_transitions_total",
    "exact_gateway_token_requests_total",
    "exact_gateway_token_request_duration_seconds",
    "exact_gateway_token_expiry_timestamp_seconds",
    "exact_gateway_build_info",
)

# Fast backoff, so that the offline practice's retries and its breaker play out in a second.
FAST_RETRIES = {"retry_backoff_base_seconds": 0.01, "retry_backoff_max_seconds": 0.05}


def tool(name: str) -> str:
    """The path of a Debian tool the tests drive; missing is a failure, not a skip."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run tests/system-deps.sh (Debian 'prometheus')")
    return path


async def scrape(gateway: Gateway) -> str:
    async with aiohttp.ClientSession() as client:
        async with client.get(admin_url(gateway, "/metrics")) as resp:
            assert resp.status == 200
            return await resp.text()


def sample_names(exposition: str) -> set[str]:
    """Every name that can be queried: sample names (with _total, _bucket, _sum, _count,
    _created) and the family names of # TYPE lines."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


async def drive_every_family(gateway: Gateway) -> None:
    """Traffic that makes every family of the contract hold samples: successes, an offline
    practice (503s, retries, retries stopped, its breaker opening, circuit_open), a 502 and a
    400. The token request happened at start."""
    async with aiohttp.ClientSession() as client:

        async def call(path: str, expected: int, method: str = "GET") -> None:
            url = URL(proxy_url(gateway, path), encoded=True)
            async with client.request(method, url) as resp:
                await resp.read()
                assert resp.status == expected, (path, resp.status)

        await call("/v1/Subscriptions/active", 200)
        await call("/v1/Practices/UKTEST1/details", 200)
        await call("/v1/Practices/UKTEST1/Patients", 405, "HEAD")  # EXACT: GET only
        await call("/v1/Practices/UKERROR1/details", 502)
        await call("/v1/Practices/%2e%2e/details", 400)
        # 3 attempts, then 2 more and the breaker opens (5 consecutive failures), then at once.
        for _ in range(3):
            await call("/v1/Practices/UKOFFLINE1/details", 503)


@pytest.fixture
async def busy_gateway(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> Gateway:
    """A gateway in front of the sandbox after :func:`drive_every_family`."""
    sandbox = await make_sandbox()
    gateway = await start_on_sandbox(sandbox, **FAST_RETRIES)
    await drive_every_family(gateway)
    return gateway
