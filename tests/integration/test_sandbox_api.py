"""The simulated EXACT API over real sockets: the relay's checks and every endpoint."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from yarl import URL

from gateway.sandbox import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    LIMITED_CLIENT_ID,
    LIMITED_CLIENT_SECRET,
    SANDBOX_STATE,
    SandboxConfig,
    build_sandbox_app,
)

Client = TestClient[web.Request, web.Application]
WINDOW = {"from": "2024-01-01T00:00:00Z", "to": "2025-01-01T00:00:00+00:00"}
UNKNOWN_UUID = "0fffffff-1200-0000-0000-008034ec7256"


class Api:
    """A thin caller of the sandbox holding one token."""

    def __init__(self, client: Client, token: str) -> None:
        self.client = client
        self.token = token

    def headers(self, **extra: str) -> dict[str, str]:
        """Bearer token and API version, plus extras."""
        return {"Authorization": f"Bearer {self.token}", "x-api-version": "1.0", **extra}

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        """GET `path`; return status and decoded JSON (or text for errors)."""
        headers = kwargs.pop("headers", None) or self.headers()
        response = await self.client.get(path, headers=headers, **kwargs)
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def fetch_token(
    client: Client,
    client_id: str = DEMO_CLIENT_ID,
    secret: str = DEMO_CLIENT_SECRET,
    scope: str | None = None,
) -> str:
    """A token from the sandbox's identity server."""
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    form = {"grant_type": "client_credentials"} | ({"scope": scope} if scope else {})
    response = await client.post(
        "/connect/token", data=form, headers={"Authorization": f"Basic {raw}"}
    )
    assert response.status == 200, await response.text()
    token: str = (await response.json())["access_token"]
    return token


@pytest.fixture
async def sandbox(aiohttp_client: AiohttpClient) -> Client:
    """A sandbox with small pages so that paging is exercised."""
    return await aiohttp_client(build_sandbox_app(SandboxConfig(page_budget_bytes=8192)))


@pytest.fixture
async def api(sandbox: Client) -> Api:
    """A caller holding a token with every scope."""
    return Api(sandbox, await fetch_token(sandbox))


async def first_patient(api: Api, practice: str = "UKTEST1", **wanted: Any) -> dict[str, Any]:
    """The first patient of `practice` whose fields match `wanted`."""
    _, patients = await api.get(f"/v1/Practices/{practice}/Patients")
    return next(p for p in patients if all(p[k] == v for k, v in wanted.items()))


async def appointments(api: Api, practice: str = "UKTEST1", **params: str) -> list[dict[str, Any]]:
    """Every appointment of a query, following continuation tokens to the end."""
    found: list[dict[str, Any]] = []
    query = WINDOW | params
    while True:
        response = await api.client.get(
            f"/v1/Practices/{practice}/Appointments", params=query, headers=api.headers()
        )
        assert response.status == 200, await response.text()
        found += await response.json()
        token = response.headers.get("continuationToken")
        if token is None:
            return found
        query = WINDOW | params | {"continuationToken": token}


# --- step 1: the bearer token -------------------------------------------------------------


async def test_missing_token_is_401_with_bare_challenge(api: Api) -> None:
    """No Authorization, or another scheme, gets 401 and `WWW-Authenticate: Bearer`."""
    for headers in ({"x-api-version": "1.0"}, {"Authorization": "Basic abc"}):
        response = await api.client.get("/v1/Practices/UKTEST1/details", headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.content_type == "text/plain"


async def test_malformed_token_is_401_invalid_token(api: Api) -> None:
    """A token that is not ours gets 401 with error=invalid_token and a description."""
    for token in ("abc", api.token[:-4] + "AAAA"):
        status, _ = await api.get(
            "/v1/Practices/UKTEST1/details", headers={"Authorization": f"Bearer {token}"}
        )
        assert status == 401
    response = await api.client.get(
        "/v1/Practices/UKTEST1/details", headers={"Authorization": "Bearer abc"}
    )
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert "error_description=" in response.headers["WWW-Authenticate"]


# --- step 2: x-api-version ------------------------------------------------------------------


async def test_api_version_header(api: Api) -> None:
    """Absent or 1/1.0 is accepted; another version is 400; answers carry the supported list."""
    path = "/v1/Practices/UKTEST1/details"
    auth = {"Authorization": f"Bearer {api.token}"}
    for headers, expected in (
        (auth, 200),
        (auth | {"x-api-version": "1"}, 200),
        (auth | {"x-api-version": "2.0"}, 400),
        (auth | {"x-api-version": "latest"}, 400),
    ):
        response = await api.client.get(path, headers=headers)
        assert response.status == expected, headers
        assert response.headers["api-supported-versions"] == "1.0"
    assert (
        "2.0" in await (await api.client.get(path, headers=auth | {"x-api-version": "2.0"})).text()
    )


# --- steps 3 and 4: scope and subscription --------------------------------------------------


async def test_missing_scope_is_403(sandbox: Client) -> None:
    """The limited client may read details but not list appointments."""
    limited = Api(sandbox, await fetch_token(sandbox, LIMITED_CLIENT_ID, LIMITED_CLIENT_SECRET))
    assert (await limited.get("/v1/Practices/UKTEST1/details"))[0] == 200
    status, text = await limited.get("/v1/Practices/UKTEST1/Appointments", params=WINDOW)
    assert status == 403
    assert "appointment.list" in text


async def test_token_with_fewer_scopes_is_403(sandbox: Client) -> None:
    """A token requested with a subset of scopes only opens those endpoints."""
    api = Api(sandbox, await fetch_token(sandbox, scope="practice.get"))
    assert (await api.get("/v1/Practices/UKTEST1/details"))[0] == 200
    assert (await api.get("/v1/Subscriptions/active"))[0] == 403


async def test_unsubscribed_and_unknown_practices_are_403(api: Api) -> None:
    """Neither an unsubscribed nor an unknown practice is reachable, and neither is relayed."""
    for practice in ("UKNOSUB1", "NOSUCHPRACTICE"):
        status, _ = await api.get(f"/v1/Practices/{practice}/details")
        assert status == 403
    state = api.client.app[SANDBOX_STATE]
    assert state.practices["UKNOSUB1"].attempts == 0


# --- routing ----------------------------------------------------------------------------------


async def test_unknown_routes_and_methods(api: Api) -> None:
    """Unknown paths are 404 even without a token; a wrong method is 405 with Allow."""
    response = await api.client.get("/v1/Practices/UKTEST1/Treatments")
    assert response.status == 404
    response = await api.client.delete("/v1/Practices/UKTEST1/Payors", headers=api.headers())
    assert response.status == 405
    assert response.headers["Allow"] == "GET"


async def test_paths_are_case_insensitive(api: Api) -> None:
    """Any letter case of the path, practice id and record id reaches the same record."""
    _, practitioners = await api.get("/v1/Practices/UKTEST1/Practitioners")
    upper_id = practitioners[0]["id"].upper()
    status, body = await api.get(f"/V1/PRACTICES/uktest1/practitioners/{upper_id}/")
    assert status == 200
    assert body == practitioners[0]


# --- endpoints ----------------------------------------------------------------------------------


async def test_subscriptions_list_the_subscribed_practices(api: Api) -> None:
    """ListActiveSubscriptions is a bare array of every subscribed practice id."""
    status, body = await api.get("/v1/Subscriptions/active")
    assert status == 200
    assert set(body) == {
        "UKTEST1", "UKTEST2", "WFEVAL", "UKOFFLINE1", "UKERROR1", "UKSLOW1", "UKFLAKY1",
        "UKTIMEOUT1", "UKOLD1", "UKLEGACY1",
    }  # fmt: skip


async def test_practice_details(api: Api) -> None:
    """Details carry the practice id and its current EXACT version."""
    status, body = await api.get("/v1/Practices/wfeval/details")
    assert status == 200
    assert body["practiceId"] == "WFEVAL"
    assert body["pmsVersion"] == "13.860"
    assert body["practiceTimezoneUtcOffsetMinutes"] == 60
    assert body["locations"]
    assert {p["payorType"] for p in body["supportedPayors"]} >= {"Private", "NhsEngland"}
    _, old = await api.get("/v1/Practices/UKOLD1/details")
    assert old["pmsVersion"] == "13.850"


async def test_records_by_id_and_404_and_400(api: Api) -> None:
    """Each get-by-id finds its record, answers 404 for an unknown uuid, 400 for a bad one."""
    for kind in ("Patients", "Payors", "Practitioners", "Appointments"):
        path = f"/v1/Practices/UKTEST1/{kind}"
        items = await appointments(api) if kind == "Appointments" else (await api.get(path))[1]
        status, record = await api.get(f"{path}/{items[-1]['id']}")
        assert (status, record) == (200, items[-1])
        status, text = await api.get(f"{path}/{UNKNOWN_UUID}")
        assert status == 404
        assert "not found" in text
        assert (await api.get(f"{path}/not-a-uuid"))[0] == 400


async def test_paging_walks_every_appointment_exactly_once(api: Api) -> None:
    """Following continuation tokens yields all 500 appointments once, in order."""
    records = api.client.app[SANDBOX_STATE].data.records("UKTEST1")
    walked = await appointments(api)
    ids = [a["id"] for a in walked]
    assert len(ids) == len(set(ids)) == len(records.appointments) == 500
    assert ids == [a.data["id"] for a in records.ordered]


async def test_pages_respect_the_byte_budget_and_token_travels_as_header(api: Api) -> None:
    """Each page is at most the budget; the token is accepted as a request header too."""
    response = await api.client.get(
        "/v1/Practices/UKTEST1/Appointments", params=WINDOW, headers=api.headers()
    )
    first = await response.read()
    assert len(first) <= 8192
    token = response.headers["continuationToken"]
    second = await api.client.get(
        "/v1/Practices/UKTEST1/Appointments",
        params=WINDOW,
        headers=api.headers(continuationToken=token),
    )
    assert second.status == 200
    page_two = await second.json()
    assert page_two
    assert page_two[0]["id"] not in first.decode()


async def test_bad_continuation_tokens_are_400(api: Api) -> None:
    """A garbled token, or one replayed with other filters, is refused."""
    path = "/v1/Practices/UKTEST1/Appointments"
    response = await api.client.get(path, params=WINDOW, headers=api.headers())
    token = response.headers["continuationToken"]
    for params in (
        WINDOW | {"continuationToken": "garbage"},
        WINDOW | {"continuationToken": token[:-3] + "xyz"},
        WINDOW | {"status": "Pending", "continuationToken": token},
    ):
        status, _ = await api.get(path, params=params)
        assert status == 400


async def test_appointment_filters(api: Api) -> None:
    """status, practitionerId, patientId and locationId each narrow the list correctly."""
    everything = await appointments(api)
    sample = everything[10]
    cases = {
        "status": (sample["status"], lambda a: a["status"] == sample["status"]),
        "patientId": (sample["patientId"], lambda a: a["patientId"] == sample["patientId"]),
        "locationId": (
            sample["location"]["id"].upper(),
            lambda a: a["location"]["id"] == sample["location"]["id"],
        ),
        "practitionerId": (
            sample["providers"][0]["id"],
            lambda a: a["providers"][0]["id"] == sample["providers"][0]["id"],
        ),
    }
    for name, (value, keep) in cases.items():
        filtered = await appointments(api, **{name: value})
        assert filtered == [a for a in everything if keep(a)], name
        assert filtered


async def test_empty_status_means_no_filter_as_the_php_client_sends_it(api: Api) -> None:
    """The only public client always appends `&status=` (empty without a status); ASP.NET
    binds an empty value to null for a nullable enum, so it must mean "no status filter"."""
    everything = await appointments(api)
    practitioner = everything[0]["providers"][0]["id"]
    expected = [a for a in everything if practitioner in {p["id"] for p in a["providers"]}]
    # Byte for byte what the client builds: a trailing slash, DATE_ISO8601 offsets (+0000),
    # and the empty status last.
    query = (
        "from=2024-01-01T00%3A00%3A00%2B0000&to=2025-01-01T00%3A00%3A00%2B0000"
        f"&practitionerId={practitioner}&status="
    )
    found: list[dict[str, Any]] = []
    target = URL(f"/v1/Practices/UKTEST1/Appointments/?{query}", encoded=True)
    while True:
        response = await api.client.get(target, headers=api.headers())
        assert response.status == 200, await response.text()
        found += await response.json()
        token = response.headers.get("continuationToken")
        if token is None:
            break
        target = URL(
            f"/v1/Practices/UKTEST1/Appointments/?{query}&continuationToken={token}", encoded=True
        )
    assert found == expected
    assert found


async def test_empty_filters_are_ignored_but_a_real_status_still_filters(api: Api) -> None:
    """Empty `status`, `patientId`, `locationId` and `practitionerId` are "no filter"; an
    empty status next to a real one leaves the real one in force."""
    everything = await appointments(api)
    empty = {"status": "", "patientId": "", "locationId": "", "practitionerId": ""}
    assert await appointments(api, **empty) == everything
    wanted = everything[3]["status"]
    mixed = await api.client.get(
        URL(
            "/v1/Practices/UKTEST1/Appointments?from=2024-05-01T00:00:00Z"
            f"&to=2024-05-08T00:00:00Z&status=&status={wanted}",
            encoded=True,
        ),
        headers=api.headers(),
    )
    assert mixed.status == 200
    assert {a["status"] for a in await mixed.json()} == {wanted}


async def test_date_window_is_half_open_and_offsets_are_equivalent(api: Api) -> None:
    """from is inclusive, to exclusive; Z, +00:00 and +0000 give the same answer."""
    everything = await appointments(api)
    start = everything[100]["startDate"]
    window = {"from": start, "to": "2024-12-31T00:00:00+0000"}
    later = await appointments(api, **window)
    assert later[0]["startDate"] == start
    utc = {"from": "2024-05-01T00:00:00Z", "to": "2024-05-08T00:00:00Z"}
    same = {"from": "2024-05-01T00:00:00+0000", "to": "2024-05-08T00:00:00+00:00"}
    assert await appointments(api, **utc) == await appointments(api, **same)


@pytest.mark.parametrize(
    "params",
    [
        {"to": "2024-05-01T00:00:00Z"},
        {"from": "2024-05-01T00:00:00Z"},
        {"from": "2024-05-01T00:00:00", "to": "2024-06-01T00:00:00Z"},
        {"from": "2024-05-01", "to": "2024-06-01T00:00:00Z"},
        {"from": "2024-06-01T00:00:00Z", "to": "2024-05-01T00:00:00Z"},
        WINDOW | {"status": "Booked"},
        WINDOW | {"patientId": "123"},
    ],
)
async def test_bad_list_queries_are_400(api: Api, params: dict[str, str]) -> None:
    """Missing dates, dates without offset, reversed windows and bad filters are 400."""
    status, text = await api.get("/v1/Practices/UKTEST1/Appointments", params=params)
    assert status == 400
    assert text


async def test_patch_persists_and_conflicts(api: Api) -> None:
    """A PATCH is answered with the record, is visible afterwards, and final states 409."""
    target = next(a for a in await appointments(api) if a["status"] == "Pending")
    path = f"/v1/Practices/UKTEST1/Appointments/{target['id']}"
    response = await api.client.patch(path, json={"status": "Confirmed"}, headers=api.headers())
    assert response.status == 200
    assert (await response.json())["status"] == "Confirmed"
    assert (await api.get(path))[1]["status"] == "Confirmed"
    response = await api.client.patch(path, json={"status": "Cancelled"}, headers=api.headers())
    assert response.status == 200
    response = await api.client.patch(path, json={"status": "Confirmed"}, headers=api.headers())
    assert response.status == 409
    response = await api.client.patch(path, json={"notes": "x"}, headers=api.headers())
    assert response.status == 400
    response = await api.client.patch(path, data="status=Pending", headers=api.headers())
    assert response.status == 415


async def test_patch_moves_the_appointment_in_listings(api: Api) -> None:
    """A rescheduled appointment is listed at its new time, still exactly once."""
    target = next(a for a in await appointments(api) if a["status"] == "Confirmed")
    path = f"/v1/Practices/UKTEST1/Appointments/{target['id']}"
    response = await api.client.patch(
        path, json={"startDate": "2024-12-01T09:00:00Z"}, headers=api.headers()
    )
    assert response.status == 200
    walked = await appointments(api)
    assert [a["id"] for a in walked].count(target["id"]) == 1
    assert walked[-1]["id"] == target["id"]
    assert walked[-1]["startDate"] == "2024-12-01T10:00:00+01:00"


async def test_patch_needs_exact_13_856(api: Api) -> None:
    """On a practice running 13.850 a PATCH is 400 saying the version is too old."""
    _, listed = await api.get("/v1/Practices/UKOLD1/Appointments", params=WINDOW)
    path = f"/v1/Practices/UKOLD1/Appointments/{listed[0]['id']}"
    response = await api.client.patch(path, json={"status": "Confirmed"}, headers=api.headers())
    assert response.status == 400
    assert "13.856" in await response.text()


async def test_patients_and_contact_details_by_scope(sandbox: Client, api: Api) -> None:
    """ContactDetails shows emails only with the email scope and phones only with phone."""
    patient = await first_patient(api, patientHasEmail=True, patientHasSms=True)
    path = f"/v1/Practices/UKTEST1/Patients/{patient['id']}/ContactDetails"
    status, both = await api.get(path)
    assert status == 200
    assert both["emailAddresses"][0].endswith("@example.com")
    assert both["phoneNumbers"][0]["phoneType"] == "Mobile"
    email_only = Api(
        sandbox, await fetch_token(sandbox, scope="patient.get patient.get.contactdetails.email")
    )
    assert (await email_only.get(path))[1] == {"emailAddresses": both["emailAddresses"]}
    neither = Api(sandbox, await fetch_token(sandbox, scope="patient.get"))
    assert (await neither.get(path))[1] == {}


async def test_contact_is_accepted_once_and_recorded(api: Api) -> None:
    """POST Contact answers 202 and the message is recorded exactly once."""
    patient = await first_patient(api, patientHasSms=True)
    path = f"/v1/Practices/UKTEST1/Patients/{patient['id']}/Contact"
    message = {"type": "Sms", "subject": "", "body": "Reminder: see you tomorrow at 9"}
    response = await api.client.post(path, json=message, headers=api.headers())
    assert response.status == 202
    recorded = await (await api.client.get("/_sandbox/messages")).json()
    assert recorded["total"] == 1
    [sent] = recorded["practices"]["UKTEST1"]
    assert (sent["patientId"], sent["type"], sent["body"]) == (
        patient["id"],
        "Sms",
        message["body"],
    )


@pytest.mark.parametrize(
    "body",
    [
        {"type": "Fax", "subject": "s", "body": "b"},
        {"type": "Email", "subject": "", "body": "b"},
        {"type": "Sms", "body": ""},
        {"type": "Sms", "body": "b", "scheduled": "tomorrow"},
        {"type": "Sms", "body": "b", "priority": "high"},
        {"type": "Sms", "body": "b", "extra": 1},
    ],
)
async def test_bad_contact_requests_are_400_and_not_recorded(
    api: Api, body: dict[str, Any]
) -> None:
    """Invalid messages are refused and leave no side effect."""
    patient = await first_patient(api, patientHasSms=True, patientHasEmail=True)
    path = f"/v1/Practices/UKTEST1/Patients/{patient['id']}/Contact"
    response = await api.client.post(path, json=body, headers=api.headers())
    assert response.status == 400
    assert (await (await api.client.get("/_sandbox/messages")).json())["total"] == 0


async def test_lists_of_payors_practitioners_and_patients(api: Api) -> None:
    """The list endpoints answer bare JSON arrays of their records."""
    for kind, minimum in (("Payors", 3), ("Practitioners", 4), ("Patients", 300)):
        status, body = await api.get(f"/v1/Practices/UKTEST2/{kind}")
        assert status == 200
        assert isinstance(body, list)
        assert len(body) >= minimum


async def test_reset_forgets_edits_and_messages(api: Api) -> None:
    """After POST /_sandbox/reset, patched appointments and sent messages are gone."""
    target = next(a for a in await appointments(api) if a["status"] == "Pending")
    path = f"/v1/Practices/UKTEST1/Appointments/{target['id']}"
    await api.client.patch(path, json={"status": "Confirmed"}, headers=api.headers())
    patient = await first_patient(api, patientHasSms=True)
    await api.client.post(
        f"/v1/Practices/UKTEST1/Patients/{patient['id']}/Contact",
        json={"type": "Sms", "body": "hello"},
        headers=api.headers(),
    )
    assert (await api.client.post("/_sandbox/reset")).status == 200
    assert (await api.get(path))[1] == target
    assert (await (await api.client.get("/_sandbox/messages")).json())["total"] == 0
