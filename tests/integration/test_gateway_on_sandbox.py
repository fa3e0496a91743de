"""The gateway in front of the sandbox: real EXACT semantics pass through intact."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.app import Gateway
from tests.fakes import proxy_url, wait_until


async def control(sandbox: TestServer, path: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as client:
        async with client.get(sandbox.make_url(f"/_sandbox{path}")) as resp:
            assert resp.status == 200
            body: dict[str, object] = await resp.json()
            return body


async def test_paging_through_the_gateway_sees_every_appointment_once(
    sandbox_gateway: Gateway,
) -> None:
    """The continuationToken header travels both ways untouched, page after page."""
    query = "from=2024-04-01T00:00:00%2B0000&to=2024-08-01T00:00:00Z"
    base = proxy_url(sandbox_gateway, f"/v1/Practices/UKTEST1/Appointments?{query}")
    ids: list[str] = []
    pages = 0
    headers: dict[str, str] = {}
    async with aiohttp.ClientSession() as client:
        while True:
            url = URL(base, encoded=True)
            async with client.get(url, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                page = await resp.json()
                token = resp.headers.get("continuationToken")
            pages += 1
            ids.extend(item["id"] for item in page)
            if not token:
                break
            headers = {"continuationToken": token}
    assert pages > 1
    assert len(ids) == len(set(ids))
    assert len(ids) >= 100


async def test_sandbox_sees_gateway_token_and_api_version(
    sandbox_gateway: Gateway, sandbox: TestServer
) -> None:
    """The caller sends a bogus bearer and no version; EXACT accepts the gateway's token."""
    async with aiohttp.ClientSession() as client:
        async with client.get(
            proxy_url(sandbox_gateway, "/v1/Practices/UKTEST2/details"),
            headers={"Authorization": "Bearer x"},
        ) as resp:
            assert resp.status == 200
            assert resp.headers["api-supported-versions"] == "1.0"
    log = await control(sandbox, "/practices/UKTEST2/requests")
    assert log["attempts"] == 1
    requests: Any = log["requests"]
    (entry,) = requests
    assert entry["api_version"] == "1.0"


async def test_exact_errors_pass_through(sandbox_gateway: Gateway, sandbox: TestServer) -> None:
    """503 (offline), 502 (erroring), 404, 400: EXACT's own answers. 403 (not subscribed)
    keeps its status but, once the subscription list is known, is the gateway's own mirror
    (``practice_not_subscribed``) and never reaches EXACT."""
    cases = {
        "/v1/Practices/UKOFFLINE1/details": 503,
        "/v1/Practices/UKERROR1/details": 502,
        "/v1/Practices/UKNOSUB1/details": 403,
        "/v1/Practices/UKTEST1/Patients/00000000-0000-0000-0000-000000000000": 404,
        "/v1/Practices/UKTEST1/Appointments?from=2024-05-01T00:00:00&to=2024-05-02": 400,
    }

    async def listed() -> bool:
        return sandbox_gateway.practices.subscriptions.fresh()

    await wait_until(listed, 10)
    async with aiohttp.ClientSession() as client:
        for path, status in cases.items():
            async with client.get(proxy_url(sandbox_gateway, path)) as resp:
                assert resp.status == status, path
                if "UKNOSUB1" in path:
                    assert resp.headers["X-Gateway-Error"] == "practice_not_subscribed"
                else:
                    assert "X-Gateway-Error" not in resp.headers
    unsubscribed = await control(sandbox, "/practices/UKNOSUB1/requests")
    assert unsubscribed["attempts"] == 0
    assert unsubscribed["refused"] == 0
    offline = await control(sandbox, "/practices/UKOFFLINE1/requests")
    assert offline["attempts"] == 3  # a GET on 503: retried up to the 3 attempts
    erroring = await control(sandbox, "/practices/UKERROR1/requests")
    assert erroring["attempts"] == 1  # 502: the practice answered; never retried


async def test_post_contact_reaches_the_practice_once(
    sandbox_gateway: Gateway, sandbox: TestServer
) -> None:
    """A side-effecting POST is forwarded exactly once with its JSON body."""
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url(sandbox_gateway, "/v1/Practices/UKTEST1/Patients")) as r:
            patients = await r.json()
        patient = next(p for p in patients if p["patientHasSms"])
        async with client.post(
            proxy_url(sandbox_gateway, f"/v1/Practices/UKTEST1/Patients/{patient['id']}/Contact"),
            json={"type": "Sms", "subject": "", "body": "Your appointment is tomorrow"},
        ) as resp:
            assert resp.status == 202, await resp.text()
    messages = await control(sandbox, "/messages")
    assert messages["total"] == 1
