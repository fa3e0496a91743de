"""Practice behaviours and the control endpoints over real sockets: faults on demand, and
exact counts of what reached each simulated practice."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gateway.sandbox import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, SandboxConfig, build_sandbox_app

Client = TestClient[web.Request, web.Application]
LATENCY = 0.05


class Caller:
    """Calls the sandbox's API with a valid token."""

    def __init__(self, client: Client, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}", "x-api-version": "1.0"}

    async def details(self, practice: str) -> int:
        """GET a practice's details; return the status."""
        response = await self.client.get(f"/v1/Practices/{practice}/details", headers=self.headers)
        await response.read()
        return response.status

    async def control(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call a control endpoint; return status and JSON."""
        response = await self.client.request(method, f"/_sandbox{path}", json=body)
        return response.status, await response.json()


async def make_caller(aiohttp_client: AiohttpClient, **config: Any) -> Caller:
    """A sandbox with short latencies and a caller holding a token for it."""
    client = await aiohttp_client(
        build_sandbox_app(SandboxConfig(slow_latency_s=LATENCY, **config))
    )
    raw = base64.b64encode(f"{DEMO_CLIENT_ID}:{DEMO_CLIENT_SECRET}".encode()).decode()
    response = await client.post(
        "/connect/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {raw}"},
    )
    return Caller(client, (await response.json())["access_token"])


@pytest.fixture
async def caller(aiohttp_client: AiohttpClient) -> Caller:
    """A caller against a fresh sandbox."""
    return await make_caller(aiohttp_client)


@pytest.mark.parametrize(
    ("practice", "status"),
    [("UKTEST1", 200), ("UKOFFLINE1", 503), ("UKERROR1", 502), ("UKTIMEOUT1", 504)],
)
async def test_behaviours_answer_their_status(caller: Caller, practice: str, status: int) -> None:
    """Healthy 200, offline 503, erroring 502, timeout 504; each is one attempt."""
    assert await caller.details(practice) == status
    _, log = await caller.control("GET", f"/practices/{practice}/requests")
    assert log["attempts"] == 1
    [entry] = log["requests"]
    assert entry["status"] == status
    assert entry["method"] == "GET"
    assert entry["path"] == f"/v1/Practices/{practice}/details"
    assert entry["api_version"] == "1.0"
    assert isinstance(entry["at"], float)


async def test_slow_and_timeout_take_their_latency(caller: Caller) -> None:
    """A slow practice answers 200 after its latency; a timeout answers 504 after it."""
    for practice, status in (("UKSLOW1", 200), ("UKTIMEOUT1", 504)):
        started = time.monotonic()
        assert await caller.details(practice) == status
        assert time.monotonic() - started >= LATENCY


async def test_flaky_share_matches_the_rate_and_is_reproducible(
    aiohttp_client: AiohttpClient,
) -> None:
    """About failure_rate of a flaky practice's answers are 503, identically on every run."""
    runs = []
    for _ in range(2):
        caller = await make_caller(aiohttp_client, flaky_failure_rate=0.5, seed=42)
        runs.append([await caller.details("UKFLAKY1") for _ in range(200)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 503}
    assert 0.35 <= runs[0].count(503) / 200 <= 0.65


async def test_control_changes_behaviour_at_run_time(caller: Caller) -> None:
    """PUT turns a healthy practice offline and back; attempts count every relayed call."""
    status, body = await caller.control("PUT", "/practices/UKTEST1", {"behaviour": "offline"})
    assert (status, body["behaviour"]) == (200, "offline")
    assert await caller.details("UKTEST1") == 503
    await caller.control("PUT", "/practices/uktest1", {"behaviour": "healthy"})
    assert await caller.details("UKTEST1") == 200
    _, practices = await caller.control("GET", "/practices")
    [uktest1] = [p for p in practices["practices"] if p["id"] == "UKTEST1"]
    assert uktest1 == {
        "id": "UKTEST1",
        "behaviour": "healthy",
        "latency_s": 0.0,
        "failure_rate": 0.3,
        "subscribed": True,
        "pms_version": "13.860",
        "attempts": 2,
    }


async def test_unsubscribing_a_practice(caller: Caller) -> None:
    """A practice set unsubscribed answers 403, is not listed and gets no attempts."""
    await caller.control("PUT", "/practices/UKTEST2", {"subscribed": False})
    assert await caller.details("UKTEST2") == 403
    response = await caller.client.get("/v1/Subscriptions/active", headers=caller.headers)
    assert "UKTEST2" not in await response.json()
    assert (await caller.control("GET", "/practices/UKTEST2/requests"))[1]["attempts"] == 0


async def test_many_practices_can_be_added(caller: Caller) -> None:
    """Thousands of new ids can be created; they are subscribed and answer."""
    for n in range(1000):
        status, _ = await caller.control("PUT", f"/practices/LOAD{n:04d}", {})
        assert status == 201
    assert await caller.details("LOAD0999") == 200
    response = await caller.client.get("/v1/Subscriptions/active", headers=caller.headers)
    assert len(await response.json()) == 1009


async def test_old_version_practice_is_400_everywhere(caller: Caller) -> None:
    """Below EXACT 13.842 the whole API answers 400."""
    await caller.control("PUT", "/practices/UKTEST1", {"pms_version": "13.840"})
    assert await caller.details("UKTEST1") == 400


@pytest.mark.parametrize(
    "body",
    [{"behaviour": "sleepy"}, {"latency_s": "fast"}, {"failure_rate": 2}, {"bogus": 1}],
)
async def test_control_rejects_bad_practice_settings(caller: Caller, body: dict[str, Any]) -> None:
    """Invalid settings get 400 with a message naming the problem."""
    status, answer = await caller.control("PUT", "/practices/UKTEST1", body)
    assert status == 400
    assert answer["error"]


async def test_unknown_practice_log_is_404(caller: Caller) -> None:
    """Asking for the requests of a practice that does not exist is 404."""
    assert (await caller.control("GET", "/practices/NOPE/requests"))[0] == 404


async def test_request_log_is_bounded(caller: Caller) -> None:
    """The request log keeps the last 1000 entries while attempts keep counting."""
    for _ in range(1010):
        await caller.details("UKOFFLINE1")
    _, log = await caller.control("GET", "/practices/UKOFFLINE1/requests")
    assert log["attempts"] == 1010
    assert len(log["requests"]) == 1000


async def test_reset_restores_defaults(caller: Caller) -> None:
    """Reset clears counts, logs, messages, edits and practice or identity changes."""
    await caller.control("PUT", "/practices/UKTEST1", {"behaviour": "erroring"})
    await caller.control("PUT", "/practices/EXTRA1", {})
    await caller.control("PUT", "/identity", {"mode": "failing"})
    await caller.details("UKTEST1")
    status, _ = await caller.control("POST", "/reset")
    assert status == 200
    _, practices = await caller.control("GET", "/practices")
    assert "EXTRA1" not in {p["id"] for p in practices["practices"]}
    assert all(p["attempts"] == 0 for p in practices["practices"])
    assert await caller.details("UKTEST1") == 200
    _, identity = await caller.control("GET", "/identity")
    assert identity["mode"] == "normal"
    assert identity["token_requests"]["total"] == 0
    assert await caller.details("UKTEST1") == 200  # the old token still works after reset
