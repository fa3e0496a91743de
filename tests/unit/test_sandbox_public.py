"""The sandbox's public surface, which the CLI, the gateway's tests and benchmarks rely on."""

from __future__ import annotations

import time

import pytest

from gateway import sandbox
from gateway.sandbox import (
    ALL_SCOPES,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    SANDBOX_STATE,
    SandboxConfig,
    build_sandbox_app,
)


def test_public_names_are_pinned() -> None:
    """Renaming or dropping an exported name is a deliberate, visible change."""
    assert set(sandbox.__all__) == {
        "ALL_SCOPES",
        "DEMO_CLIENT_ID",
        "DEMO_CLIENT_SECRET",
        "LIMITED_CLIENT_ID",
        "LIMITED_CLIENT_SECRET",
        "SANDBOX_STATE",
        "SandboxConfig",
        "SandboxState",
        "build_sandbox_app",
    }
    assert (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET) == (
        "sandbox-partner",
        "sandbox-secret-not-for-production",
    )
    assert len(ALL_SCOPES) == len(set(ALL_SCOPES)) == 14


def test_config_defaults() -> None:
    """Defaults match the documented ones."""
    config = SandboxConfig()
    assert (config.token_lifetime_s, config.page_budget_bytes) == (3600, 16384)
    assert (config.slow_latency_s, config.flaky_failure_rate, config.seed) == (2.0, 0.3, 20240501)
    assert config.signing_key is None
    assert config.clock is time.time
    assert config.monotonic is time.monotonic


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("token_lifetime_s", 0),
        ("page_budget_bytes", -1),
        ("slow_latency_s", -0.1),
        ("flaky_failure_rate", 1.5),
        ("signing_key", b"short"),
    ],
)
def test_config_fails_loudly(field: str, value: object) -> None:
    """A bad setting is refused at construction, naming the field."""
    with pytest.raises(ValueError, match=field):
        SandboxConfig(**{field: value})  # type: ignore[arg-type]


def test_two_sandboxes_share_nothing() -> None:
    """Each app gets its own state and, by default, its own signing key."""
    first, second = build_sandbox_app(), build_sandbox_app()
    assert first[SANDBOX_STATE] is not second[SANDBOX_STATE]
    assert first[SANDBOX_STATE].signing_key != second[SANDBOX_STATE].signing_key
    first[SANDBOX_STATE].practices["UKTEST1"].behaviour = "offline"
    assert second[SANDBOX_STATE].practices["UKTEST1"].behaviour == "healthy"
