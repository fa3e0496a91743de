"""Fixtures of the chart tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helm.charts import resolve_example


@pytest.fixture(scope="session")
def example_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """helm/examples/sidecar-demo with the exact-gateway dependency resolved (in a copy)."""
    return resolve_example(tmp_path_factory.mktemp("charts"))
