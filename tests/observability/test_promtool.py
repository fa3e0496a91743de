"""promtool on the real exposition, the alerting rules, their unit tests and the example
configuration."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import yaml

from gateway.app import Gateway
from tests.observability.conftest import (
    CONTRACT_FAMILIES,
    PROMETHEUS_CONFIG,
    RULES,
    RULES_TESTS,
    sample_names,
    scrape,
    tool,
)


async def test_promtool_check_metrics_on_a_real_exposition(busy_gateway: Gateway) -> None:
    """Every family of the contract, with samples, passes the linter without a single
    remark (a lint warning is printed but exits 0, so the output must be empty too)."""
    exposition = await scrape(busy_gateway)
    names = sample_names(exposition)
    for family in CONTRACT_FAMILIES:
        assert family in names, family
    assert 'exact_gateway_circuit_breaker_state{practice_id="UKOFFLINE1"} 1.0' in exposition
    assert 'exact_gateway_retries_total{reason="status_503"}' in exposition
    assert 'exact_gateway_rejected_requests_total{reason="bad_request"}' in exposition

    process = await asyncio.create_subprocess_exec(
        tool("promtool"),
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(exposition.encode()), 30)
    print(f"promtool check metrics: exit {process.returncode}, {len(output)} bytes of remarks")
    assert process.returncode == 0, output.decode()
    assert output.decode().strip() == ""


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=RULES.parent,
    )
    print(result.stdout, result.stderr)
    return result


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", RULES_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_example_config() -> None:
    """The example scrape configuration is valid and loads the rules."""
    result = promtool("check", "config", PROMETHEUS_CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alert_is_actionable() -> None:
    """Each alert has a known severity and says what happened and what to do."""
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names)) == 11
    for rule in alerts():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        for annotation in ("summary", "description", "runbook"):
            assert len(rule["annotations"][annotation]) > 20, (rule["alert"], annotation)
        assert 'job="exact-gateway"' in rule["expr"], rule["alert"]


def test_unit_tests_cover_every_alert_firing_and_not_firing() -> None:
    tests = yaml.safe_load(RULES_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    every = {rule["alert"] for rule in alerts()}
    assert fired == every
    assert quiet == every  # each one is also shown not firing (pending or a near miss)
