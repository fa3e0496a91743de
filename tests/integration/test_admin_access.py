"""The admin port tells no strangers: introspection for allowed networks only, foreign Host
names refused (DNS rebinding), probes and metrics for everyone. Real sockets; the stranger is
a second loopback source address (127.0.0.2) outside ADMIN_INTROSPECTION_FROM=127.0.0.1/32.
"""

from __future__ import annotations

import ipaddress

import aiohttp
import pytest

from gateway.admin_access import AdminAccess, host_name
from gateway.app import Gateway
from tests.fakes import GatewayFactory, ScriptedUpstream, admin_url, gateway_settings

INTROSPECTION = ("/", "/status", "/token", "/breakers", "/practices", "/practices/UKTEST1")
OPEN = ("/healthz", "/readyz", "/metrics")


async def fetch(
    gateway: Gateway, path: str, *, source: str = "127.0.0.1", host: str | None = None
) -> tuple[int, str, str]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    headers = {"Host": host} if host is not None else {}
    async with aiohttp.ClientSession(connector=connector) as client:
        async with client.get(admin_url(gateway, path), headers=headers) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


@pytest.fixture
async def guarded(upstream: ScriptedUpstream, start_gateway: GatewayFactory) -> Gateway:
    return await start_gateway(
        gateway_settings(
            upstream.url,
            admin_introspection_from="127.0.0.1/32",
            admin_allowed_hosts="exact-gateway.apps.svc.cluster.local",
        )
    )


async def test_strangers_get_metrics_and_probes_but_no_introspection(guarded: Gateway) -> None:
    """From 127.0.0.2 (outside 127.0.0.1/32): /token, /breakers, /status, the page and any
    other path are 403 problem+json; /healthz, /readyz and /metrics are served."""
    for path in INTROSPECTION:
        status, content_type, body = await fetch(guarded, path, source="127.0.0.2")
        assert status == 403, path
        assert content_type.startswith("application/problem+json")
        assert '"reason": "introspection_forbidden"' in body
        assert "test-client" not in body, "the client id stays private"
    status, _, body = await fetch(guarded, "/metrics", source="127.0.0.2")
    assert status == 200
    assert "exact_gateway_build_info" in body
    for path in ("/healthz", "/readyz"):
        status, _, _ = await fetch(guarded, path, source="127.0.0.2")
        assert status in {200, 503}, path  # answered (readiness may still wait for a token)
    status, _, body = await fetch(guarded, "/token", source="127.0.0.1")
    assert status == 200
    assert '"client_id": "test-client"' in body


async def test_foreign_host_is_refused_whatever_the_path(guarded: Gateway) -> None:
    """Host evil.example (a rebinding page) gets 421 even from loopback and even on
    /metrics; IP literals, localhost and the allowed name are answered."""
    for path in (*INTROSPECTION, *OPEN):
        for host in ("evil.example", "evil.example:8481", "127.0.0.1.nip.io", "localhost.evil"):
            status, content_type, body = await fetch(guarded, path, host=host)
            assert status == 421, (path, host)
            assert content_type.startswith("application/problem+json")
            assert '"reason": "misdirected_request"' in body
    port = guarded.admin_port
    for host in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        "LOCALHOST.",
        f"[::1]:{port}",
        "10.244.1.17:8481",
        f"exact-gateway.apps.svc.cluster.local:{port}",
    ):
        status, _, _ = await fetch(guarded, "/token", host=host)
        assert status == 200, host


async def test_defaults_open_introspection_to_loopback_only(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    """With the defaults every loopback address may introspect (127.0.0.0/8, ::1)."""
    gateway = await start_gateway(gateway_settings(upstream.url))
    status, _, _ = await fetch(gateway, "/breakers", source="127.0.0.2")
    assert status == 200


@pytest.mark.parametrize(
    ("remote", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.244.1.17", False),
        ("::ffff:10.244.1.17", False),
        ("fe80::1%eth0", False),
        ("192.168.0.1", False),
        ("", False),
        (None, False),
        ("not-an-address", False),
    ],
)
def test_default_introspection_networks(remote: str | None, allowed: bool) -> None:
    """The default rule admits loopback only, IPv4-mapped callers included; anything it
    cannot parse is a stranger."""
    assert AdminAccess().may_introspect(remote) is allowed
    refusal = AdminAccess().decide(remote, "10.0.0.1:8481", "/token")
    assert (refusal is None) is allowed


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Evil.Example:8481", "evil.example"),
        ("[::1]:8481", "::1"),
        ("::1", "::1"),
        ("localhost.", "localhost"),
        ("[broken", "[broken"),
    ],
)
def test_host_names(header: str, name: str) -> None:
    assert host_name(header) == name


def test_open_paths_answer_any_address_with_an_ip_host() -> None:
    """Kubelet and Prometheus arrive from the pod network with the pod IP as Host."""
    access = AdminAccess.of([ipaddress.ip_network("127.0.0.1/32")], [])
    for path in OPEN:
        assert access.decide("10.0.0.5", "10.244.1.17:8481", path) is None
    assert access.decide("10.0.0.5", None, "/metrics") is None
    assert access.decide("10.0.0.5", "10.244.1.17:8481", "/metrics/../token") is not None
