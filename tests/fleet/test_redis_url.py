"""REDIS_URL and REDIS_URL_FILE: checked at start, never echoed, shown only redacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.fleet.redis_url import redacted
from gateway.settings import load_settings

PASSWORD = "pw-9d81-never-shown"


@pytest.mark.parametrize(
    "url",
    [
        "http://cache-77.internal:6379/0",
        f"redis://:{PASSWORD}@/0",
        f"redis://:{PASSWORD}@cache-77.internal:99999/0",
        f"redis://:{PASSWORD}@cache-77.internal:6379/zero",
        f"redis://:{PASSWORD}@cache-77.internal:6379/0\r\nFLUSHALL",
        "redis://cache-77.internal:6379/0#frag",
    ],
)
def test_bad_urls_stop_the_start_without_echoing(url: str) -> None:
    """Each bad URL is a ConfigError naming the variable, never the URL or its password."""
    with pytest.raises(ConfigError, match="EXACT_GATEWAY_REDIS_URL") as caught:
        load_settings(environment="sandbox", redis_url=url)
    assert PASSWORD not in str(caught.value)
    assert "cache-77" not in str(caught.value)


def test_url_file(tmp_path: Path) -> None:
    """A file with the URL (and a trailing newline, as Secrets often have) is accepted; an
    empty, binary or oversized one, or both settings at once, is refused without its content."""
    good = tmp_path / "url"
    good.write_text(f"rediss://:{PASSWORD}@redis.cache.svc:6380/2\n")
    assert load_settings(environment="sandbox", redis_url_file=str(good)).redis_url_file == good
    for content in (b"", b"\xff\xfe", b"redis://h/0" + b" " * 5000, PASSWORD.encode()):
        bad = tmp_path / "bad"
        bad.write_bytes(content)
        with pytest.raises(ConfigError, match="EXACT_GATEWAY_REDIS_URL_FILE") as caught:
            load_settings(environment="sandbox", redis_url_file=str(bad))
        assert PASSWORD not in str(caught.value)
    with pytest.raises(ConfigError, match="not both"):
        load_settings(environment="sandbox", redis_url="redis://h:6379/0", redis_url_file=str(good))


def test_redacted() -> None:
    """Only scheme, host, port and database are shown."""
    assert redacted(f"rediss://user:{PASSWORD}@h.example:6380/3?ssl_ca_certs=/x") == (
        "rediss://h.example:6380/3"
    )
    assert redacted("redis://[::1]/0") == "redis://[::1]:6379/0"
