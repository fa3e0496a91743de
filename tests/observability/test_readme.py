"""The README stays true: every setting, endpoint and metric family it names exists, and
every setting the gateway reads is documented there."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

from gateway.app import Gateway
from gateway.settings import SandboxServerSettings, Settings
from tests.fakes import admin_url
from tests.observability.conftest import sample_names, scrape

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def table_first_column(text: str) -> list[str]:
    """The backticked names in the first cell of each table row."""
    names = []
    for line in text.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.extend(re.findall(r"`([^`]+)`", first_cell))
    return names


def test_settings_table_matches_the_settings() -> None:
    """Every variable in the README's settings table is read, and every setting is there."""
    documented = set(table_first_column(section("Configuration")))
    known = (
        {name.upper() for name in Settings.model_fields}
        | {f"SANDBOX_{name.upper()}" for name in SandboxServerSettings.model_fields}
        | {"CONFIG_FILE"}
    )
    assert documented <= known, documented - known
    assert known <= documented, known - documented


async def test_admin_endpoints_in_readme_answer(busy_gateway: Gateway) -> None:
    """Each endpoint the README lists for the admin port answers (no 404)."""
    paths = re.findall(r"\| `GET (/[a-z]*)` \|", section("The admin port (8481)"))
    assert {"/", "/status", "/healthz", "/readyz", "/metrics", "/breakers", "/token"} <= set(paths)
    async with aiohttp.ClientSession() as client:
        for path in paths:
            async with client.get(admin_url(busy_gateway, path)) as resp:
                assert resp.status in {200, 503}, path


async def test_metric_families_in_readme_are_exported(busy_gateway: Gateway) -> None:
    """Every family in the README's metrics table appears in a real scrape."""
    exported = sample_names(await scrape(busy_gateway))
    families = table_first_column(section("Metrics (prefix `exact_gateway_`)"))
    assert len(families) >= 15
    for family in families:
        name = f"exact_gateway_{family}"
        variants = {name, f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        assert variants & exported, family
