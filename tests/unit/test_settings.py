"""Settings: sources, validation messages that name the variable, secrets never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import (
    Environment,
    SandboxServerSettings,
    Settings,
    load_sandbox_settings,
    load_settings,
)

QA_CREDENTIALS = {
    "client_id": "partner",
    "client_secret": "hunter2-very-secret",
    "scopes": "practice.get",
}


def test_environment_is_required_and_choices_are_listed() -> None:
    """No ENVIRONMENT: one message naming the variable and the three accepted values."""
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "EXACT_GATEWAY_ENVIRONMENT" in message
    for choice in ("qa", "production", "sandbox"):
        assert choice in message


def test_unknown_environment_lists_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in ENVIRONMENT names the variable and what it accepts."""
    monkeypatch.setenv("EXACT_GATEWAY_ENVIRONMENT", "prod")
    with pytest.raises(ConfigError, match=r"EXACT_GATEWAY_ENVIRONMENT: must be one of .*qa"):
        load_settings()


@pytest.mark.parametrize("environment", ["qa", "production"])
def test_environment_urls(environment: str) -> None:
    """QA and production resolve to their documented hosts."""
    settings = load_settings(environment=environment, **QA_CREDENTIALS)
    host = "qa-api" if environment == "qa" else "api"
    auth = "qa-auth" if environment == "qa" else "auth"
    assert settings.resolved_api_url() == f"https://{host}.ex.softwareofexcellence.com"
    assert settings.resolved_authority_url() == f"https://{auth}.softwareofexcellence.com"


def test_credentials_required_outside_sandbox() -> None:
    """QA without credentials names every missing variable."""
    with pytest.raises(ConfigError) as caught:
        load_settings(environment="qa")
    message = str(caught.value)
    assert "CLIENT_ID" in message
    assert "CLIENT_SECRET" in message
    assert "SCOPES" in message


def test_sandbox_needs_no_credentials() -> None:
    """The sandbox environment runs with built-in demo credentials."""
    settings = load_settings(environment="sandbox")
    assert settings.environment is Environment.SANDBOX
    assert settings.uses_inprocess_sandbox


def test_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors and repr() never show the secret, whatever else is wrong."""
    monkeypatch.setenv("EXACT_GATEWAY_PORT", "not-a-port")
    with pytest.raises(ConfigError) as caught:
        load_settings(environment="qa", **QA_CREDENTIALS)
    assert "EXACT_GATEWAY_PORT" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    monkeypatch.delenv("EXACT_GATEWAY_PORT")
    settings = load_settings(environment="qa", **QA_CREDENTIALS)
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())


def test_secret_and_secret_file_are_exclusive(tmp_path: Path) -> None:
    """Both set is ambiguous, so it is refused with a clear message."""
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file")
    with pytest.raises(ConfigError, match="not both"):
        load_settings(environment="qa", client_secret_file=str(secret_file), **QA_CREDENTIALS)


def test_missing_secret_file_is_reported(tmp_path: Path) -> None:
    """A secret file that does not exist fails the start, naming the variable."""
    with pytest.raises(ConfigError, match="EXACT_GATEWAY_CLIENT_SECRET_FILE"):
        load_settings(
            environment="qa",
            client_id="partner",
            scopes="practice.get",
            client_secret_file=str(tmp_path / "nope"),
        )


@pytest.mark.parametrize(
    "raw",
    [
        "practice.get appointment.list",
        "practice.get,appointment.list",
        " practice.get , appointment.list ",
    ],
)
def test_scopes_space_or_comma_separated(raw: str) -> None:
    """SCOPES accepts spaces, commas or both."""
    settings = load_settings(environment="qa", client_id="p", client_secret="s", scopes=raw)
    assert settings.scopes == ("practice.get", "appointment.list")


def test_scopes_from_environment_are_not_json_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain scope list in the environment is split, not parsed as JSON."""
    monkeypatch.setenv("EXACT_GATEWAY_SCOPES", "practice.get productsubscription.get")
    settings = load_settings(environment="qa", client_id="p", client_secret="s")
    assert settings.scopes == ("practice.get", "productsubscription.get")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com", "absolute http"),
        ("example.com", "absolute http"),
        ("https://user:pw@example.com", "credentials"),
        ("https://example.com/?a=1", "query"),
    ],
)
def test_bad_urls_are_refused(url: str, problem: str) -> None:
    """API_URL must be a plain absolute http(s) URL."""
    with pytest.raises(ConfigError, match=f"EXACT_GATEWAY_API_URL: .*{problem}"):
        load_settings(environment="qa", api_url=url, **QA_CREDENTIALS)


def test_url_trailing_slash_is_dropped() -> None:
    """Paths are appended to API_URL, so a trailing slash would double up."""
    settings = load_settings(environment="qa", api_url="http://127.0.0.1:9/", **QA_CREDENTIALS)
    assert settings.resolved_api_url() == "http://127.0.0.1:9"


def test_sources_priority(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Flags beat environment, which beats .env, which beats the config file."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        'environment = "qa"\nclient_id = "from-file"\nclient_secret = "f"\n'
        'scopes = "practice.get"\nport = 1111\nadmin_port = 2222\nlog_format = "text"\n'
    )
    (tmp_path / ".env").write_text("EXACT_GATEWAY_PORT=3333\nEXACT_GATEWAY_ADMIN_PORT=4444\n")
    monkeypatch.setenv("EXACT_GATEWAY_CONFIG_FILE", str(config))
    monkeypatch.setenv("EXACT_GATEWAY_ADMIN_PORT", "5555")
    settings = load_settings(log_format="json")
    assert settings.client_id == "from-file"  # only the file sets it
    assert settings.port == 3333  # .env over the file
    assert settings.admin_port == 5555  # environment over .env
    assert settings.log_format.value == "json"  # flag over everything


def test_missing_config_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A config file that does not exist is an error, not silently ignored."""
    monkeypatch.setenv("EXACT_GATEWAY_CONFIG_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="EXACT_GATEWAY_CONFIG_FILE"):
        load_settings(environment="sandbox")


def test_sandbox_command_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox command reads EXACT_GATEWAY_SANDBOX_*; bad values name the variable."""
    assert load_sandbox_settings().port == 8482
    monkeypatch.setenv("EXACT_GATEWAY_SANDBOX_PORT", "99999")
    with pytest.raises(ConfigError, match="EXACT_GATEWAY_SANDBOX_PORT"):
        load_sandbox_settings()


def test_example_config_files_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented examples in config/ load (the TOML and the .env)."""
    root = Path(__file__).resolve().parents[2] / "config"
    monkeypatch.setenv("EXACT_GATEWAY_CONFIG_FILE", str(root / "exact-gateway.toml"))
    settings = load_settings()
    assert settings.environment is Environment.SANDBOX


def test_every_setting_is_documented_in_config_examples() -> None:
    """config/ documents every setting, in the TOML and the .env example."""
    root = Path(__file__).resolve().parents[2] / "config"
    toml_text = (root / "exact-gateway.toml").read_text()
    env_text = (root / "example.env").read_text()
    for name in Settings.model_fields:
        assert f"{name} =" in toml_text, name
        assert f"EXACT_GATEWAY_{name.upper()}=" in env_text, name
    for name in SandboxServerSettings.model_fields:
        assert f"EXACT_GATEWAY_SANDBOX_{name.upper()}=" in env_text, name


def test_example_env_file_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """config/example.env copied to .env is a working sandbox configuration."""
    root = Path(__file__).resolve().parents[2] / "config"
    (tmp_path / ".env").write_text((root / "example.env").read_text())
    settings = load_settings()
    assert settings.environment is Environment.SANDBOX
    assert settings.port == 8480


def test_practice_pauses_file_is_unset_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """No pauses file unless one is named; an empty value is unset, not the current folder;
    a file that does not exist yet is accepted (it means no pauses until it appears)."""
    assert load_settings(environment="sandbox").practice_pauses_file is None
    monkeypatch.setenv("EXACT_GATEWAY_PRACTICE_PAUSES_FILE", "")
    assert load_settings(environment="sandbox").practice_pauses_file is None
    monkeypatch.setenv("EXACT_GATEWAY_PRACTICE_PAUSES_FILE", "/nonexistent/pauses.json")
    assert load_settings(environment="sandbox").practice_pauses_file == Path(
        "/nonexistent/pauses.json"
    )


@pytest.mark.parametrize(
    ("variables", "enabled"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": " OTLP "}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, False),
        # The specification: only "true" disables; anything else is false.
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "yes"}, True),
        ({"OTEL_SERVICE_NAME": "billing", "OTEL_TRACES_SAMPLER": "always_on"}, False),
        ({"OTEL_TRACES_EXPORTER": "", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_ask(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], enabled: bool
) -> None:
    """Off by default; an exporter of otlp or an OTLP endpoint turns it on; none or
    OTEL_SDK_DISABLED=true turn it off; the SDK's other variables alone change nothing."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(environment="sandbox")
    assert settings.tracing.enabled is enabled


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin", "must be otlp or none"),
        ("OTEL_TRACES_EXPORTER", "otlp,console", "must be otlp or none"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "must be http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json", "must be http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "must be an absolute http"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://c/v1/traces", "must be an absolute http"),
    ],
)
def test_bad_otel_variables_fail_the_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    """A typo in a tracing variable is a configuration error naming it, never a silent off."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"{name}: {message}") as caught:
        load_settings(environment="sandbox")
    assert value not in str(caught.value)


def test_otel_variables_are_read_from_the_environment_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A .env file does not turn tracing on: the SDK would not see its other variables."""
    (tmp_path / ".env").write_text("OTEL_TRACES_EXPORTER=otlp\n")
    monkeypatch.chdir(tmp_path)
    assert not load_settings(environment="sandbox").tracing.enabled
