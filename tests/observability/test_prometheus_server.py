"""A real Prometheus server (Debian's binary) scrapes a gateway's admin port, sees the target
up and the contract's families, and loads and evaluates the alerting rules."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.app import Gateway
from tests.observability.conftest import CONTRACT_FAMILIES, RULES, tool

WAIT = 30.0  # seconds: every wait on the server is bounded by this


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Prometheus:
    url: str
    log: Path

    async def api(self, path: str, **params: str) -> Any:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{self.url}/api/v1/{path}", params=params) as resp:
                body = await resp.json()
                assert resp.status == 200, body
                assert body["status"] == "success", body
                return body["data"]

    async def until(self, what: str, check: Callable[[], Awaitable[Any]]) -> Any:
        """Poll ``check`` until it returns something truthy, for at most WAIT seconds."""
        deadline = time.monotonic() + WAIT
        while True:
            with contextlib.suppress(aiohttp.ClientError, AssertionError):
                result = await check()
                if result:
                    return result
            if time.monotonic() > deadline:
                pytest.fail(f"Prometheus: {what} not within {WAIT} s; its log:\n{self.tail()}")
            await asyncio.sleep(0.25)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


@pytest.fixture
async def prometheus(busy_gateway: Gateway, tmp_path: Path) -> AsyncIterator[Prometheus]:
    """Prometheus scraping ``busy_gateway`` every second, with our rules; killed afterwards."""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "exact-gateway",
                        "static_configs": [{"targets": [f"127.0.0.1:{busy_gateway.admin_port}"]}],
                    }
                ],
            }
        )
    )
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        yield Prometheus(f"http://127.0.0.1:{port}", log)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_prometheus_scrapes_the_gateway_and_loads_the_rules(
    prometheus: Prometheus, busy_gateway: Gateway
) -> None:
    async def target_up() -> dict[str, Any] | None:
        targets = (await prometheus.api("targets"))["activeTargets"]
        return next((t for t in targets if t["health"] == "up"), None)

    target = await prometheus.until("target up", target_up)
    assert target["labels"]["job"] == "exact-gateway"
    assert target["scrapeUrl"] == f"http://127.0.0.1:{busy_gateway.admin_port}/metrics"

    async def has_samples(query: str) -> list[dict[str, Any]]:
        data = await prometheus.api("query", query=query)
        result: list[dict[str, Any]] = data["result"]
        return result

    for family in ("exact_gateway_requests_total", *CONTRACT_FAMILIES):
        # Histograms are stored as their _count, _sum and _bucket series.
        name = (
            f"{family}_count" if family.endswith("_seconds") and "expiry" not in family else family
        )
        await prometheus.until(f"samples of {name}", functools.partial(has_samples, name))

    info = await has_samples("exact_gateway_build_info")
    assert info[0]["metric"]["environment"] == "sandbox"
    assert info[0]["value"][1] == "1"
    breaker = await has_samples('exact_gateway_circuit_breaker_state{practice_id="UKOFFLINE1"}')
    assert breaker[0]["value"][1] == "1"
    served = await has_samples("sum(exact_gateway_requests_total)")
    assert float(served[0]["value"][1]) >= 7

    expected = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    }

    async def rules_evaluated() -> list[dict[str, Any]] | None:
        groups = (await prometheus.api("rules"))["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        # Health is "unknown" until a rule's first evaluation, then "ok" or "err".
        return rules if rules and all(rule["health"] != "unknown" for rule in rules) else None

    rules = await prometheus.until("rules evaluated", rules_evaluated)
    assert {rule["name"] for rule in rules} == expected
    for rule in rules:
        assert rule["type"] == "alerting"
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    # A target that is up and exports build_info: the scrape alerts are quiet once the
    # group has been evaluated after the first scrape (an evaluation before it may have
    # seen nothing and made ExactGatewayMetricsAbsent pending for a second).

    async def scrape_alerts_quiet() -> bool:
        groups = (await prometheus.api("rules"))["groups"]
        states = {rule["name"]: rule["state"] for group in groups for rule in group["rules"]}
        return (
            states["ExactGatewayTargetDown"] == states["ExactGatewayMetricsAbsent"] == ("inactive")
        )

    await prometheus.until("scrape alerts inactive", scrape_alerts_quiet)
    # The open breaker is already seen (pending: its `for` is 10 minutes).
    await prometheus.until(
        "the open breaker's alert pending",
        lambda: has_samples('ALERTS{alertname="ExactGatewayPracticeUnreachable"}'),
    )
