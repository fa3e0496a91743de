"""The commands as a user runs them: serve on the sandbox, check, help, bad configuration."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.sandbox import DEMO_CLIENT_ID, SandboxConfig, build_sandbox_app
from tests.audit import AUDIT
from tests.fakes import spawn_gateway

AUDIT.secrets.update({"do-not-print-me", "wrong-secret-value"})


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith("EXACT_GATEWAY_")}
    base.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    AUDIT.log_lines.extend(result.stderr.splitlines())
    AUDIT.log_lines.extend(result.stdout.splitlines())
    return result


async def run_cli_async(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the CLI without blocking the loop that serves the sandbox it talks to."""
    result = await asyncio.to_thread(run_cli, *args, env=env)
    return result.returncode, result.stdout, result.stderr


@pytest.fixture
async def sandbox_url() -> AsyncIterator[str]:
    server = TestServer(build_sandbox_app(SandboxConfig()))
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


def test_help_lists_commands_and_variables() -> None:
    """--help names every command, and each flag names its environment variable."""
    top = run_cli("--help")
    assert top.returncode == 0
    for command in ("serve", "sandbox", "check"):
        assert command in top.stdout
    serve = run_cli("serve", "--help")
    for variable in ("ENVIRONMENT", "HOST", "PORT", "ADMIN_HOST", "ADMIN_PORT", "LOG_LEVEL"):
        assert f"EXACT_GATEWAY_{variable}" in serve.stdout
    sandbox = run_cli("sandbox", "--help")
    assert "EXACT_GATEWAY_SANDBOX_PORT" in sandbox.stdout


def test_serve_without_environment_fails_clearly() -> None:
    """No ENVIRONMENT: exit 2 and one line naming the variable and its choices."""
    result = run_cli("serve")
    assert result.returncode == 2
    assert "EXACT_GATEWAY_ENVIRONMENT" in result.stderr
    assert "production" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_setting_never_prints_the_secret() -> None:
    """A bad port with a secret set: the message names the port, not the secret."""
    result = run_cli(
        "serve",
        env={
            "EXACT_GATEWAY_ENVIRONMENT": "qa",
            "EXACT_GATEWAY_CLIENT_ID": "c",
            "EXACT_GATEWAY_CLIENT_SECRET": "do-not-print-me",
            "EXACT_GATEWAY_SCOPES": "practice.get",
            "EXACT_GATEWAY_ADMIN_PORT": "70000",
        },
    )
    assert result.returncode == 2
    assert "EXACT_GATEWAY_ADMIN_PORT" in result.stderr
    assert "do-not-print-me" not in result.stderr + result.stdout


async def test_serve_on_sandbox_answers_without_caller_credentials() -> None:
    """`serve --environment sandbox`: practice details and subscriptions, no credentials."""
    child = await spawn_gateway({}, "--environment", "sandbox")
    try:
        base = f"http://127.0.0.1:{child.proxy_port}"
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{base}/v1/Practices/UKTEST1/details") as resp:
                assert resp.status == 200
                details = await resp.json()
            async with client.get(f"{base}/v1/Subscriptions/active") as resp:
                assert resp.status == 200
                practices = await resp.json()
            async with client.get(
                f"{base}/v1/Practices/UKTEST1/details", headers={"Authorization": "Bearer x"}
            ) as resp:
                assert resp.status == 200
        assert details["practiceId"] == "UKTEST1"
        assert {"UKTEST1", "UKTEST2"} <= set(practices)
        assert any("SANDBOX MODE" in line for line in child.log_lines)
    finally:
        child.process.send_signal(signal.SIGTERM)
        assert await child.wait() == 0


def test_check_on_inprocess_sandbox_succeeds() -> None:
    """`check --environment sandbox` prints a readable report and exits 0."""
    result = run_cli("check", "--environment", "sandbox")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ok]   token" in result.stdout
    assert "[ok]   ListActiveSubscriptions" in result.stdout
    assert "UKTEST1" in result.stdout
    assert "everything works" in result.stdout


def test_check_reports_each_subscribed_practice() -> None:
    """With practice.get, check reports each subscribed practice's EXACT version, or that it
    is not reachable now (a warning, not a failure: exit 0)."""
    result = run_cli("check", "--environment", "sandbox")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ok]   practice UKTEST1: reachable, EXACT 13.860" in result.stdout
    assert "[ok]   practice UKOLD1: reachable, EXACT 13.850" in result.stdout
    assert "[warn] practice UKOFFLINE1: not reachable now (HTTP 503)" in result.stdout


async def test_check_with_wrong_secret_says_credentials_refused(sandbox_url: str) -> None:
    """A wrong secret: non-zero exit (2) and a report saying the credentials were refused."""
    code, out, err = await run_cli_async(
        "check",
        env={
            "EXACT_GATEWAY_ENVIRONMENT": "sandbox",
            "EXACT_GATEWAY_API_URL": sandbox_url,
            "EXACT_GATEWAY_CLIENT_ID": DEMO_CLIENT_ID,
            "EXACT_GATEWAY_CLIENT_SECRET": "wrong-secret-value",
        },
    )
    assert code == 2, out + err
    assert "refused the credentials" in out
    assert "invalid_client" in out
    assert "wrong-secret-value" not in out + err


async def test_check_with_missing_scope_is_a_configuration_problem(sandbox_url: str) -> None:
    """Scopes without productsubscription.get: exit 2 and a hint about the scope."""
    code, out, _ = await run_cli_async(
        "check",
        env={
            "EXACT_GATEWAY_ENVIRONMENT": "sandbox",
            "EXACT_GATEWAY_API_URL": sandbox_url,
            "EXACT_GATEWAY_SCOPES": "practice.get",
        },
    )
    assert code == 2
    assert "productsubscription.get" in out


def test_check_with_unreachable_identity_server_exits_1() -> None:
    """Nothing listening: exit 1, reported as unreachable rather than misconfigured."""
    result = run_cli(
        "check",
        env={
            "EXACT_GATEWAY_ENVIRONMENT": "qa",
            "EXACT_GATEWAY_API_URL": "http://127.0.0.1:9",
            "EXACT_GATEWAY_TOKEN_URL": "http://127.0.0.1:9/connect/token",
            "EXACT_GATEWAY_CLIENT_ID": "c",
            "EXACT_GATEWAY_CLIENT_SECRET": "s",
            "EXACT_GATEWAY_SCOPES": "productsubscription.get",
        },
    )
    assert result.returncode == 1, result.stdout
    assert "[FAIL] identity server" in result.stdout


def test_port_in_use_fails_with_a_clear_message() -> None:
    """Another process on the proxy port: exit 1 and a one-line reason, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "serve",
            "--environment",
            "sandbox",
            "--port",
            str(port),
            "--admin-port",
            "0",
            "--admin-host",
            "127.0.0.1",
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_toml_syntax_error_is_one_line_naming_file_line_and_column(tmp_path: Path) -> None:
    """A config file that is not TOML: exit 2 and one line with the file, line and column
    (it was a 27-line traceback and exit 1)."""
    config = tmp_path / "exact-gateway.toml"
    config.write_text('environment = "qa"\nclient_id = "x"\nscopes = [practice.get\n')
    result = run_cli("serve", env={"EXACT_GATEWAY_CONFIG_FILE": str(config)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"exact-gateway: EXACT_GATEWAY_CONFIG_FILE: {config}: ")
    assert "line 3, column 11" in lines[0]
    check = run_cli("check", env={"EXACT_GATEWAY_CONFIG_FILE": str(config)})
    assert check.returncode == 2
    assert len(check.stderr.strip().splitlines()) == 1
