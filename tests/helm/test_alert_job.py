"""The chart's alert rules follow the monitoring job's name, proven by promtool.

The rules in ``files/`` (a copy of ``config/prometheus/exact-gateway-rules.yml``) are written
for ``job="exact-gateway"``. Rendered with a renamed job, every matcher must select the new name,
or every alert silently stops firing. The proof: ``promtool test rules`` runs the canonical unit
tests (which show every alert firing and not firing) on the *rendered* rules, with every input
series and expected label carrying the renamed job.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.charts import one, render
from tests.observability.conftest import RULES, RULES_TESTS, tool

JOB = "payments-exact_gw"


def renamed(text: str, job: str) -> str:
    """The canonical unit tests with every mention of the default job renamed."""
    return (
        text.replace('job="exact-gateway"', f'job="{job}"')
        .replace("job: exact-gateway", f"job: {job}")
        .replace("job exact-gateway", f"job {job}")
        .replace("still named exact-gateway", f"still named {job}")
    )


def promtool_test(
    workdir: Path, rules: dict[str, Any], tests: str
) -> subprocess.CompletedProcess[str]:
    (workdir / RULES.name).write_text(yaml.safe_dump(rules, sort_keys=False))
    (workdir / RULES_TESTS.name).write_text(tests)
    return subprocess.run(
        [tool("promtool"), "test", "rules", RULES_TESTS.name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=workdir,
    )


def rendered_rules(values: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = one(render(values), "PrometheusRule")["spec"]
    return spec


@pytest.mark.parametrize(
    "values",
    [
        {"serviceMonitor": {"enabled": True, "job": JOB}},
        {"mode": "sidecar", "podMonitor": {"enabled": True, "job": JOB}},
        {"prometheusRule": {"job": JOB}},
    ],
    ids=["serviceMonitor", "podMonitor", "explicit"],
)
def test_every_alert_fires_for_a_renamed_job(values: dict[str, Any], tmp_path: Path) -> None:
    """promtool test rules passes on the rendered rules against renamed series, and no
    matcher of the default job is left."""
    merged = {"settings": {"environment": "sandbox"}, **values}
    merged["prometheusRule"] = {"enabled": True, **values.get("prometheusRule", {})}
    rules = rendered_rules(merged)
    text = yaml.safe_dump(rules)
    assert 'job="exact-gateway"' not in text
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(exprs) == 11
    assert all(f'job="{JOB}"' in expr for expr in exprs)
    tests = renamed(RULES_TESTS.read_text(), JOB)
    assert 'exact-gateway"' not in tests
    result = promtool_test(tmp_path, rules, tests)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    alerts = set(re.findall(r"alertname: (\w+)", tests))
    assert len(alerts) == 11, "the unit tests exercise every alert"


def test_default_rules_would_miss_renamed_series(tmp_path: Path) -> None:
    """The control: the rules as written for job="exact-gateway" fail the same renamed unit
    tests, so the test above can fail (and did before the chart rewrote the matcher)."""
    canonical = yaml.safe_load(RULES.read_text())
    result = promtool_test(tmp_path, canonical, renamed(RULES_TESTS.read_text(), JOB))
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def test_default_job_renders_the_canonical_rules() -> None:
    """With no renamed job the rendered rules are exactly config/'s (the tested copy)."""
    rules = rendered_rules(
        {"settings": {"environment": "sandbox"}, "prometheusRule": {"enabled": True}}
    )
    assert rules == yaml.safe_load(RULES.read_text())
