"""The dashboard is valid, and every PromQL expression in it and in the alerting rules names
only metrics a real gateway exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from gateway.app import Gateway
from tests.observability.conftest import DASHBOARD, RULES, sample_names, scrape

# PromQL functions and aggregation operators (Prometheus 2.42).
FUNCTIONS = frozenset(
    re.findall(
        r"\w+",
        """abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil
        changes clamp clamp_max clamp_min cos cosh count_over_time days_in_month day_of_month
        day_of_week day_of_year deg delta deriv exp floor histogram_count histogram_fraction
        histogram_quantile histogram_sum holt_winters hour idelta increase irate label_join
        label_replace last_over_time ln log10 log2 max_over_time min_over_time minute month pi
        predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin
        sinh sort sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh time
        timestamp vector year
        sum min max avg group stddev stdvar count count_values bottomk topk quantile""",
    )
)
KEYWORDS = frozenset(
    re.findall(
        r"\w+", "by without on ignoring group_left group_right and or unless bool offset inf nan"
    )
)
# Names a rule or panel may use that the gateway does not export: Prometheus' own.
NOT_FROM_THE_GATEWAY = frozenset({"up"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKEN = re.compile(
    r"(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)"
    r"|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)"
    r"|(?P<other>\S)"
)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers standing alone or before ``{``,
    that are not functions, keywords, label names, numbers or durations."""
    text = _STRING.sub('""', expr)  # label values, regexes, label_replace arguments
    text = _GRAFANA_VARIABLE.sub("1m", text)  # $__rate_interval, ${x}: durations or values
    text = re.sub(r"\{[^{}]*\}", "{}", text)  # label matchers: names and values
    text = re.sub(r"\[[^\[\]]*\]", "[]", text)  # ranges and subqueries
    text = _LABEL_LIST.sub(" ", text)  # by (job, le), on (instance), group_left (x)
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(text)]
    names = set()
    for index, (kind, value) in enumerate(tokens):
        if kind != "name" or value.lower() in KEYWORDS:
            continue
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if following == "(":
            assert value in FUNCTIONS, f"unknown function {value!r} in {expr!r}"
            continue
        names.add(value)
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('up{job="exact-gateway"} == 0', {"up"}),
        (
            'histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{x=~"5.."}[5m]))) > 10',
            {"a_bucket"},
        ),
        (
            "sum(rate(a_total[$__rate_interval])) / sum without (le) (b) or vector(0)",
            {"a_total", "b"},
        ),
        ("(c - time()) < 300 and on (job, instance) d > 0 unless e offset 1h", {"c", "d", "e"}),
        ('label_replace(f, "dst", "$1", "src", "(.*)") * on (i) group_left (v) g{}', {"f", "g"}),
        ("max by (state) (h) >= 1e3 and sum(i) by (job) > 0.5", {"h", "i"}),
    ],
)
def test_metric_name_parser(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return result


def dashboard_expressions() -> list[str]:
    board = dashboard()
    exprs = [
        target["expr"]
        for panel in _panels(board["panels"])
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            # Grafana's label_values(<series selector>, <label>): the selector is PromQL.
            query = variable["query"]["query"]
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert match, query
            exprs.append(match.group(1))
    return exprs


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "exact-gateway"
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"job", "instance"} <= set(variables)
    ids = []
    for panel in _panels(board["panels"]):
        ids.append(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["title"]
        assert panel["description"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert 'job="$job"' in target["expr"], target["expr"]
    assert len(ids) == len(set(ids))


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    """Callers' rate, errors and latency by route; attempts and retries; breakers by
    practice over time and open counts; token time-to-expiry; process resources."""
    text = "\n".join(dashboard_expressions())
    for needed in (
        "sum by (route) (rate(exact_gateway_requests_total",
        "exact_gateway_rejected_requests_total",
        "sum by (route, le) (rate(exact_gateway_request_duration_seconds_bucket",
        "exact_gateway_upstream_attempts_total",
        "exact_gateway_retries_total",
        "max by (practice_id) (exact_gateway_circuit_breaker_state",
        'exact_gateway_circuit_breakers{job="$job", instance=~"$instance", state="open"}',
        "exact_gateway_token_expiry_timestamp_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ):
        assert needed in text, needed


async def test_every_expression_names_only_exported_metrics(busy_gateway: Gateway) -> None:
    exported = sample_names(await scrape(busy_gateway))
    allowed = exported | NOT_FROM_THE_GATEWAY
    used: dict[str, set[str]] = {}
    for source, exprs in (("rules", rule_expressions()), ("dashboard", dashboard_expressions())):
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"no metric found in {source} expression {expr!r}"
            unknown = names - allowed
            assert not unknown, f"{source}: {sorted(unknown)} not exported, in {expr!r}"
            used.setdefault(source, set()).update(names)
    print({source: len(names) for source, names in used.items()}, "distinct metrics used")
    # Both files use the breaker, token and caller families, checked against a scrape that
    # really holds them (an open breaker, a retry, a rejection).
    for family in (
        "exact_gateway_circuit_breaker_state",
        "exact_gateway_circuit_breakers",
        "exact_gateway_token_expiry_timestamp_seconds",
        "exact_gateway_requests_total",
        "exact_gateway_retries_total",
    ):
        assert family in used["rules"] & used["dashboard"], family
