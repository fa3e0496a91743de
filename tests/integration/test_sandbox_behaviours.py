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
        "inflight": 0,
        "peak_inflight": 1,
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
    assert len(await response.json()) == 1010  # 1000 new + 10 subscribed defaults


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


# --- EXACT versions, subscriptions and the request log (issue 13) ------------------------


async def first_appointment_path(caller: Caller, practice: str) -> str:
    """The path of one pending appointment of `practice` (one a PATCH may confirm)."""
    response = await caller.client.get(
        f"/v1/Practices/{practice}/Appointments",
        params={"from": "2024-05-01T00:00:00Z", "to": "2024-06-01T00:00:00Z", "status": "Pending"},
        headers=caller.headers,
    )
    assert response.status == 200, await response.text()
    return f"/v1/Practices/{practice}/Appointments/{(await response.json())[0]['id']}"


async def patch(caller: Caller, path: str) -> tuple[int, str]:
    """PATCH an appointment to Confirmed; return status and body text."""
    response = await caller.client.patch(path, json={"status": "Confirmed"}, headers=caller.headers)
    return response.status, await response.text()


async def details_version(caller: Caller, practice: str) -> str:
    """The `pmsVersion` GetPracticeDetails reports right now."""
    response = await caller.client.get(f"/v1/Practices/{practice}/details", headers=caller.headers)
    assert response.status == 200, await response.text()
    version: str = (await response.json())["pmsVersion"]
    return version


async def test_practice_on_13_850_serves_the_api_but_refuses_patch(caller: Caller) -> None:
    """UKOLD1 (13.850) answers reads and reports its version; a PATCH gets the practice's
    400 naming 13.856, and that refusal did reach the practice (it is the server's)."""
    assert await details_version(caller, "UKOLD1") == "13.850"
    path = await first_appointment_path(caller, "UKOLD1")
    status, text = await patch(caller, path)
    assert status == 400
    assert "13.856" in text
    assert "13.850" in text
    _, log = await caller.control("GET", "/practices/UKOLD1/requests")
    assert log["requests"][-1] | {"at": 0, "time": ""} == {
        "method": "PATCH",
        "path": path,
        "query": "",
        "at": 0,
        "time": "",
        "status": 400,
        "relayed": True,
        "api_version": "1.0",
    }


async def test_practice_below_13_842_refuses_the_whole_api(caller: Caller) -> None:
    """UKLEGACY1 (13.840) answers every operation with 400 naming 13.842, even the
    details; offline, it is 503 like any offline practice (the relay cannot ask it)."""
    for path in ("/details", "/Patients", "/Payors"):
        response = await caller.client.get(f"/v1/Practices/UKLEGACY1{path}", headers=caller.headers)
        assert response.status == 400, path
        assert "13.842" in await response.text()
    await caller.control("PUT", "/practices/UKLEGACY1", {"behaviour": "offline"})
    assert await caller.details("UKLEGACY1") == 503


@pytest.mark.parametrize(
    ("version", "details", "patch_status"),
    [
        ("13.856", 200, 200),
        ("13.856.0", 200, 200),
        ("13.855.99", 200, 400),
        ("13.842", 200, 400),
        ("13.841.9", 400, None),
        ("14", 200, 200),
    ],
)
async def test_version_changes_take_effect_at_once(
    caller: Caller, version: str, details: int, patch_status: int | None
) -> None:
    """A version set through the control API is what the next details report and what the
    next request is judged by, compared numerically component by component."""
    path = await first_appointment_path(caller, "UKTEST1")
    status, body = await caller.control("PUT", "/practices/UKTEST1", {"pms_version": version})
    assert (status, body["pms_version"]) == (200, version)
    assert await caller.details("UKTEST1") == details
    if details == 200:
        assert await details_version(caller, "UKTEST1") == version
    if patch_status is not None:
        assert (await patch(caller, path))[0] == patch_status


async def test_upgrading_a_practice_lets_patch_through(caller: Caller) -> None:
    """UKOLD1 upgraded to 13.856 at run time accepts the PATCH it refused a moment ago."""
    path = await first_appointment_path(caller, "UKOLD1")
    assert (await patch(caller, path))[0] == 400
    await caller.control("PUT", "/practices/UKOLD1", {"pms_version": "13.856"})
    assert await details_version(caller, "UKOLD1") == "13.856"
    assert (await patch(caller, path))[0] == 200


async def test_subscription_changes_show_in_the_list_at_once(caller: Caller) -> None:
    """Unsubscribing drops the practice from ListActiveSubscriptions on the next call and
    subscribing again brings it back, as does creating a new practice."""

    async def active() -> list[str]:
        response = await caller.client.get("/v1/Subscriptions/active", headers=caller.headers)
        listed: list[str] = await response.json()
        return listed

    assert "UKTEST2" in await active()
    await caller.control("PUT", "/practices/UKTEST2", {"subscribed": False})
    assert "UKTEST2" not in await active()
    assert await caller.details("UKTEST2") == 403
    await caller.control("PUT", "/practices/UKTEST2", {"subscribed": True})
    assert "UKTEST2" in await active()
    assert await caller.details("UKTEST2") == 200
    assert "UKNOSUB1" not in await active()
    await caller.control("PUT", "/practices/UKNOSUB1", {"subscribed": True})
    assert "UKNOSUB1" in await active()
    await caller.control("PUT", "/practices/UKNEW9", {})
    assert "UKNEW9" in await active()


async def test_request_log_tells_relayed_from_refused(aiohttp_client: AiohttpClient) -> None:
    """Requests the relay refuses before the practice (no token, bad API version, missing
    scope, not subscribed) are logged with `relayed: false` and are not attempts; each entry
    has method, path without the query, status and a UTC time."""
    caller = await make_caller(aiohttp_client, clock=lambda: 1_780_000_000.25)
    client = caller.client
    bare = await client.get("/v1/Practices/UKTEST1/details?secret=1")
    assert bare.status == 401
    wrong_version = {**caller.headers, "x-api-version": "2.0"}
    assert (await client.get("/v1/Practices/UKTEST1/details", headers=wrong_version)).status == 400
    raw = base64.b64encode(b"sandbox-limited:sandbox-limited-secret").decode()
    token = await client.post(
        "/connect/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {raw}"},
    )
    limited = {"Authorization": f"Bearer {(await token.json())['access_token']}"}
    assert (await client.get("/v1/Practices/UKTEST1/Payors", headers=limited)).status == 403
    assert await caller.details("UKTEST1") == 200
    await caller.control("PUT", "/practices/UKTEST1", {"subscribed": False})
    assert await caller.details("UKTEST1") == 403
    assert await caller.details("NOSUCH1") == 403  # unknown ids are logged nowhere

    _, log = await caller.control("GET", "/practices/UKTEST1/requests")
    assert (log["attempts"], log["refused"]) == (1, 4)
    seen = [(e["method"], e["path"], e["status"], e["relayed"]) for e in log["requests"]]
    assert seen == [
        ("GET", "/v1/Practices/UKTEST1/details", 401, False),
        ("GET", "/v1/Practices/UKTEST1/details", 400, False),
        ("GET", "/v1/Practices/UKTEST1/Payors", 403, False),
        ("GET", "/v1/Practices/UKTEST1/details", 200, True),
        ("GET", "/v1/Practices/UKTEST1/details", 403, False),
    ]
    assert {e["time"] for e in log["requests"]} == {"2026-05-28T20:26:40.250Z"}
    assert (await caller.control("GET", "/practices/NOSUCH1/requests"))[0] == 404
