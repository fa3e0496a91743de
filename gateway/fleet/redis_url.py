"""The Redis URL: checked at start, read from a file when it holds a password, never printed.

``REDIS_URL`` names the fleet's Redis (``redis://host:6379/0``, ``rediss://`` for TLS).
When it carries a password, ``REDIS_URL_FILE`` names a file holding the URL instead, so the
password comes from a mounted Kubernetes Secret and never sits in the pod spec. Either way
the URL is checked once at start (a typo should stop the start, not show up as "Redis down"
forever) and only its redacted form (scheme, host, port, database) is ever shown.
"""

from __future__ import annotations

from pathlib import Path

from yarl import URL

SCHEMES = frozenset({"redis", "rediss"})
# A URL file is a few hundred bytes; a bound keeps a mis-mounted file from being slurped.
_URL_FILE_MAX_BYTES = 4096


def check_redis_url(value: str) -> str:
    """The URL, stripped, or ValueError saying what is wrong (never quoting it)."""
    text = value.strip()
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in text):
        raise ValueError("must be one URL without spaces or control characters")
    try:
        url = URL(text)
        port = url.port
    except ValueError:
        raise ValueError("must be a URL like redis://host:6379/0") from None
    if url.scheme not in SCHEMES or not url.host:
        raise ValueError(
            "must be a redis:// or rediss:// URL with a host, like redis://host:6379/0"
        )
    if port is not None and not 0 < port < 65536:
        raise ValueError("has an invalid port")
    database = url.path.strip("/")
    if database and not (database.isascii() and database.isdigit()):
        raise ValueError("must name the database as a number (redis://host:6379/0)")
    if url.fragment:
        raise ValueError("must not carry a fragment")
    return text


def read_redis_url_file(path: Path) -> str:
    """The checked URL held in ``path``; ValueError naming the problem, never the content."""
    try:
        with path.open("rb") as handle:
            data = handle.read(_URL_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{path} cannot be read ({type(exc).__name__})") from None
    if len(data) > _URL_FILE_MAX_BYTES:
        raise ValueError(f"{path} is larger than {_URL_FILE_MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not text.strip():
        raise ValueError(f"{path} is empty")
    try:
        return check_redis_url(text)
    except ValueError as exc:
        raise ValueError(f"{path}: the URL {exc}") from None


def redacted(url: str) -> str:
    """``scheme://host:port/db``: what logs and ``/status`` may show (no user, no password,
    no query, which may carry TLS file names or options)."""
    parsed = URL(url)
    host = parsed.host or ""
    if ":" in host:
        host = f"[{host}]"
    port = parsed.port or 6379
    database = parsed.path.strip("/") or "0"
    return f"{parsed.scheme}://{host}:{port}/{database}"
