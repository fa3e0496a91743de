"""Corporate egress: a private CA bundle (CA_BUNDLE_FILE) and an HTTP CONNECT proxy
(EGRESS_PROXY_URL), over real sockets.

The EXACT stand-in serves TLS with a certificate from a throwaway CA (trustme), as a TLS-
inspecting corporate proxy would re-sign EXACT's. The egress proxy is a small raw-asyncio
CONNECT proxy that records what it was asked and tunnels bytes both ways.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp.test_utils import TestServer

from gateway.errors import ConfigError
from gateway.settings import load_settings
from tests.audit import AUDIT
from tests.fakes import GatewayFactory, ScriptedUpstream, gateway_settings, proxy_url

PROXY_USER, PROXY_PASSWORD = "egress-user", "egress-pa55-7d1e"
# The run-wide leak audit fails if the proxy password shows up in any log line or metric.
AUDIT.secrets.add(PROXY_PASSWORD)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def bundle(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "corporate-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def tls_upstream(ca: trustme.CA) -> AsyncIterator[ScriptedUpstream]:
    """The scripted EXACT (API and identity server) over TLS, certified by the private CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    scripted = ScriptedUpstream()
    scripted.server = TestServer(scripted.app())
    await scripted.server.start_server(ssl=context)
    assert scripted.url.startswith("https://127.0.0.1:")
    yield scripted
    await scripted.server.close()


@dataclass
class ConnectProxy:
    """An HTTP CONNECT proxy: reads the request head, dials the target, splices bytes."""

    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        self.requests.append((request_line, headers))
        method, target, _ = request_line.split(" ", 2)
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        host, _, port = target.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def connect_proxy() -> AsyncIterator[ConnectProxy]:
    proxy = ConnectProxy()
    proxy.server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    yield proxy
    proxy.server.close()
    await proxy.server.wait_closed()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as client:
        async with client.get(url) as resp:
            return resp.status, await resp.text()


async def test_private_ca_is_trusted_only_with_the_bundle(
    tls_upstream: ScriptedUpstream, bundle: Path, start_gateway: GatewayFactory
) -> None:
    """Without CA_BUNDLE_FILE the re-signed certificate is refused (no token, 503); with it,
    the token and the API call both succeed over verified TLS."""
    plain = await start_gateway(gateway_settings(tls_upstream.url, deadline_seconds=1))
    status, body = await get(proxy_url(plain, "/v1/Practices/UKTEST1/details"))
    assert status == 503, body
    assert "token_unavailable" in body
    assert tls_upstream.seen == [], "no request got past the TLS handshake"
    assert tls_upstream.tokens_issued == []

    trusting = await start_gateway(gateway_settings(tls_upstream.url, ca_bundle_file=bundle))
    status, body = await get(proxy_url(trusting, "/v1/Practices/UKTEST1/details"))
    assert status == 200, body
    assert [seen.raw_path for seen in tls_upstream.seen] == ["/v1/Practices/UKTEST1/details"]


async def test_requests_go_through_the_connect_proxy(
    tls_upstream: ScriptedUpstream,
    bundle: Path,
    connect_proxy: ConnectProxy,
    start_gateway: GatewayFactory,
) -> None:
    """With EGRESS_PROXY_URL both the token request and the API call tunnel through CONNECT
    to the upstream's host:port, with the proxy credentials; the proxy never sees a path."""
    target = tls_upstream.url.removeprefix("https://")
    settings = gateway_settings(
        tls_upstream.url,
        ca_bundle_file=bundle,
        egress_proxy_url=f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{connect_proxy.port}",
    )
    gateway = await start_gateway(settings)
    status, body = await get(proxy_url(gateway, "/v1/Practices/UKTEST1/details?secret=q"))
    assert status == 200, body
    assert tls_upstream.seen[-1].raw_path == "/v1/Practices/UKTEST1/details?secret=q"
    assert tls_upstream.tokens_issued, "the token came through the proxy too"
    assert connect_proxy.requests, "the proxy saw no request"
    credentials = base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
    for request_line, headers in connect_proxy.requests:
        assert request_line == f"CONNECT {target} HTTP/1.1"
        assert headers["proxy-authorization"] == f"Basic {credentials}"
        assert "UKTEST1" not in request_line
    # Token endpoint and API share the host, but each session opens its own tunnel.
    assert len(connect_proxy.requests) >= 2


def test_bad_egress_settings_fail_in_one_line_without_the_password(tmp_path: Path) -> None:
    """A missing or non-PEM bundle and a proxy URL without a port or of another scheme are
    refused at start, naming the variable; the proxy password never appears."""
    (tmp_path / "empty.pem").write_text("")
    fake = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    (tmp_path / "fake.pem").write_text(fake)
    cases = {
        str(tmp_path / "missing.pem"): "is not a readable file",
        str(tmp_path): "is not a readable file",
        str(tmp_path / "empty.pem"): "holds no PEM CA certificate",
        str(tmp_path / "fake.pem"): "holds no PEM CA certificate",
    }
    for path, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            load_settings(environment="sandbox", ca_bundle_file=path)
        assert f"EXACT_GATEWAY_CA_BUNDLE_FILE: {path} {message}" in str(caught.value)
        assert "\n" not in str(caught.value)
    for url, message in {
        f"http://u:{PROXY_PASSWORD}@proxy.example": "must name the proxy port",
        f"socks5://u:{PROXY_PASSWORD}@proxy.example:1080": "must be an http://",
        f"http://u:{PROXY_PASSWORD}@:3128": "must be a URL like http://[user:pass@]host:port",
        "http:///3128": "must name the proxy host",
        f"http://u:{PROXY_PASSWORD}@proxy.example:3128/path?x=1": "must not carry a path",
        f"http://u:{PROXY_PASSWORD}@proxy.example:99999": "must be a URL like http://[user:pass@]host:port",
        f"{PROXY_PASSWORD}": "must be an http://",
    }.items():
        with pytest.raises(ConfigError) as caught:
            load_settings(environment="sandbox", egress_proxy_url=url)
        assert "EXACT_GATEWAY_EGRESS_PROXY_URL: " + message in str(caught.value), url
        assert PROXY_PASSWORD not in str(caught.value)
    settings = load_settings(
        environment="sandbox", egress_proxy_url=f"http://u:{PROXY_PASSWORD}@proxy.example:3128"
    )
    assert PROXY_PASSWORD not in repr(settings)
    assert PROXY_PASSWORD not in repr(settings.egress)
