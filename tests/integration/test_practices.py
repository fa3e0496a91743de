"""Knowing each practice, end to end over real sockets with the sandbox: version admission,
subscription awareness, synthetic probes, the availability ledger on the admin port, and
operator pauses through the watched file."""

from __future__ import annotations

import csv
import io
import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import Gateway
from gateway.clock import SYSTEM_CLOCK
from gateway.ledger import Answer, Ledger, LedgerPolicy
from gateway.practices.versions import VersionBook, VersionPolicy
from tests.fakes import (
    SandboxFactory,
    SandboxGatewayFactory,
    admin_url,
    control,
    proxy_url,
    wait_until,
)

APPOINTMENT = "00000000-0000-0000-0000-000000000001"


async def call(
    client: aiohttp.ClientSession, gateway: Gateway, method: str, path: str, **kwargs: Any
) -> tuple[int, dict[str, str], Any]:
    async with client.request(method, proxy_url(gateway, path), **kwargs) as resp:
        text = await resp.text()
        body = json.loads(text) if "json" in resp.headers.get("Content-Type", "") else text
        return resp.status, dict(resp.headers), body


async def admin(client: aiohttp.ClientSession, gateway: Gateway, path: str) -> Any:
    async with client.get(admin_url(gateway, path)) as resp:
        assert resp.status == 200, path
        return await resp.json()


async def log_of(sandbox: TestServer, practice: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = (
        await control(sandbox, "GET", f"/practices/{practice}/requests")
    )["requests"]
    return entries


async def test_patch_to_an_old_practice_is_answered_locally_and_followed_after_an_upgrade(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """UKOLD1 runs 13.850: once its details passed through, a PATCH of an appointment (13.856)
    is 400 practice_version_too_old naming practice, version and minimum, and the sandbox's
    log shows it never arrived; reads still pass. After the sandbox upgrades the practice the
    gateway follows within the version TTL: the PATCH reaches the practice again."""
    sandbox = await make_sandbox()
    gateway = await start_on_sandbox(sandbox, practice_version_ttl_seconds=0.5)
    patch = f"/v1/Practices/UKOLD1/Appointments/{APPOINTMENT}"
    async with aiohttp.ClientSession() as client:
        status, _, details = await call(client, gateway, "GET", "/v1/Practices/UKOLD1/details")
        assert status == 200
        assert details["pmsVersion"] == "13.850"
        status, headers, problem = await call(
            client, gateway, "PATCH", patch, json={"status": "Confirmed"}
        )
        assert status == 400
        assert headers["X-Gateway-Error"] == "practice_version_too_old"
        assert problem["practice_id"] == "UKOLD1"
        assert problem["pms_version"] == "13.850"
        assert problem["minimum_version"] == "13.856"
        assert [e["method"] for e in await log_of(sandbox, "UKOLD1")] == ["GET"]
        entry = await admin(client, gateway, "/practices/UKOLD1")
        assert entry["pms_version"] == "13.850"

        await control(sandbox, "PUT", "/practices/UKOLD1", {"pms_version": "13.860"})

        async def reached() -> bool:
            await call(client, gateway, "PATCH", patch, json={"status": "Confirmed"})
            return any(e["method"] == "PATCH" for e in await log_of(sandbox, "UKOLD1"))

        await wait_until(reached, 10)
        # And the version was learnt again: the gateway's own look-up, or a passing answer.
        await wait_until(lambda: _true(gateway.practices.versions.get("UKOLD1") is not None), 10)
        assert str(gateway.practices.versions.get("UKOLD1")) == "13.860"


async def _true(value: bool) -> bool:
    return value


async def test_unknown_version_triggers_one_background_lookup(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """A PATCH for a practice whose version is unknown is forwarded (fail open) and the
    gateway looks the version up once in the background; the next PATCH is refused."""
    sandbox = await make_sandbox()
    gateway = await start_on_sandbox(sandbox)
    patch = f"/v1/Practices/UKOLD1/Appointments/{APPOINTMENT}"
    async with aiohttp.ClientSession() as client:
        _, headers, _ = await call(client, gateway, "PATCH", patch, json={"status": "x"})
        assert "X-Gateway-Error" not in headers  # forwarded: EXACT's own answer

        async def learnt() -> bool:
            return gateway.practices.versions.get("UKOLD1") is not None

        await wait_until(learnt, 10)
        _status, headers, _ = await call(client, gateway, "PATCH", patch, json={"status": "x"})
        assert headers["X-Gateway-Error"] == "practice_version_too_old"
    methods = [(e["method"], e["path"].rsplit("/", 1)[-1]) for e in await log_of(sandbox, "UKOLD1")]
    # One PATCH forwarded and one look-up of our own (in either order: it runs beside it).
    assert sorted(methods) == [("GET", "details"), ("PATCH", APPOINTMENT)]


async def test_subscriptions_followed_at_run_time(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """UKTEST2 unsubscribed at run time: 403 practice_not_subscribed after the next refresh,
    never relayed. A practice subscribed at run time is served at once (the one re-check),
    without waiting for the next poll."""
    sandbox = await make_sandbox()
    gateway = await start_on_sandbox(
        sandbox, subscriptions_refresh_seconds=0.3, subscriptions_recheck_seconds=0
    )
    details = "/v1/Practices/{}/details"
    async with aiohttp.ClientSession() as client:
        await wait_until(lambda: _true(gateway.practices.subscriptions.fresh()), 10)
        status, _, _ = await call(client, gateway, "GET", details.format("UKTEST2"))
        assert status == 200
        await control(sandbox, "PUT", "/practices/UKTEST2", {"subscribed": False})
        await wait_until(lambda: _true(len(gateway.practices.subscriptions) == 9), 10)
        before = len(await log_of(sandbox, "UKTEST2"))
        status, headers, problem = await call(client, gateway, "GET", details.format("UKTEST2"))
        assert status == 403
        assert headers["X-Gateway-Error"] == "practice_not_subscribed"
        assert problem["practice_id"] == "UKTEST2"
        assert len(await log_of(sandbox, "UKTEST2")) == before  # never sent
        entry = gateway.practices.ledger.get("UKTEST2")
        assert entry is None  # forgotten when it left

        # A new subscription, served at once: the poll is slowed down so only the re-check
        # can have seen it.
        await control(sandbox, "PUT", "/practices/UKNEW1", {"subscribed": True})
        status, headers, _ = await call(client, gateway, "GET", details.format("UKNEW1"))
        assert status == 200, headers


async def test_offline_practice_recovers_through_the_gateways_own_probes(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory
) -> None:
    """UKOFFLINE1's breaker opens; while it is open and half-open the sandbox sees only the
    gateway's own GET …/details probes (never a caller's POST), callers get circuit_open;
    after the practice comes back the probe closes the breaker. /practices then shows the
    outage with start, end and cause, and the CSV has it too."""
    sandbox = await make_sandbox()
    gateway = await start_on_sandbox(
        sandbox,
        retry_backoff_base_seconds=0.01,
        retry_backoff_max_seconds=0.02,
        breaker_open_seconds=0.3,
        breaker_open_jitter=0.0,
        breaker_open_max_seconds=0.3,
    )
    contact = f"/v1/Practices/UKOFFLINE1/Patients/{APPOINTMENT}/Contact"
    async with aiohttp.ClientSession() as client:
        for _ in range(2):
            await call(client, gateway, "GET", "/v1/Practices/UKOFFLINE1/Patients")
        state = await admin(client, gateway, "/breakers")
        assert [p["practice_id"] for p in state["practices"]] == ["UKOFFLINE1"]
        opened = len(await log_of(sandbox, "UKOFFLINE1"))

        # Callers keep coming through the open and half-open time: all refused locally.
        async def probed_twice() -> bool:
            status, headers, _ = await call(
                client, gateway, "POST", contact, json={"method": "Sms", "message": "hi"}
            )
            assert headers.get("X-Gateway-Error") == "circuit_open", (status, headers)
            entries = (await log_of(sandbox, "UKOFFLINE1"))[opened:]
            return len(entries) >= 2

        await wait_until(probed_twice, 10)
        await control(sandbox, "PUT", "/practices/UKOFFLINE1", {"behaviour": "healthy"})

        async def closed() -> bool:
            status, _headers, _ = await call(
                client, gateway, "GET", "/v1/Practices/UKOFFLINE1/Patients"
            )
            return status == 200

        await wait_until(closed, 10)
        during = (await log_of(sandbox, "UKOFFLINE1"))[opened:]
        # Everything between the opening and the first success was our own details probe.
        first_ok = next(i for i, e in enumerate(during) if e["status"] == 200)
        assert first_ok >= 2
        for entry in during[: first_ok + 1]:
            assert (entry["method"], entry["path"]) == ("GET", "/v1/Practices/UKOFFLINE1/details")

        entry = await admin(client, gateway, "/practices/UKOFFLINE1")
        (period,) = entry["unavailable_periods"]
        assert period["start"]
        assert period["end"]
        assert period["cause"] == "503"
        assert entry["state"] == "available"
        assert entry["last_24h"]["503"] >= 3
        listing = await admin(client, gateway, "/practices")
        assert any(p["practice_id"] == "UKOFFLINE1" for p in listing["practices"])
        async with client.get(admin_url(gateway, "/practices?format=csv")) as resp:
            assert resp.headers["Content-Type"].startswith("text/csv")
            assert "attachment" in resp.headers["Content-Disposition"]
            text = await resp.text()
    assert text.endswith("\r\n")
    rows = {row["practice_id"]: row for row in csv.DictReader(io.StringIO(text))}
    row = rows["UKOFFLINE1"]
    assert row["last_unavailable_cause"] == "503"
    assert row["last_unavailable_start"]
    assert row["last_unavailable_end"]
    assert row["subscribed"] == "true"


async def test_pause_through_the_file_without_restart_and_undo(
    make_sandbox: SandboxFactory,
    start_on_sandbox: SandboxGatewayFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Writing a pause for UKTEST1 into the watched file makes the gateway answer 503
    practice_paused with Retry-After, never relayed, shown in /breakers and /practices; a
    malformed file keeps the pause; removing the entry serves the practice again."""
    pauses = tmp_path / "pauses.json"
    pauses.write_text('{"practices": {}}')
    sandbox = await make_sandbox()
    gateway = await start_on_sandbox(
        sandbox, practice_pauses_file=str(pauses), practice_pauses_poll_seconds=0.05
    )
    path = "/v1/Practices/UKTEST1/details"
    async with aiohttp.ClientSession() as client:
        assert (await call(client, gateway, "GET", path))[0] == 200
        _replace(pauses, {"UKTEST1": {"pause_until": "2999-01-01T00:00:00Z", "note": "move"}})

        async def paused() -> bool:
            return (await call(client, gateway, "GET", path))[0] == 503

        await wait_until(paused, 10)
        before = len(await log_of(sandbox, "UKTEST1"))
        _status, headers, problem = await call(client, gateway, "GET", path)
        assert headers["X-Gateway-Error"] == "practice_paused"
        assert int(headers["Retry-After"]) > 10**9  # until 2999
        assert problem["practice_id"] == "UKTEST1"
        assert len(await log_of(sandbox, "UKTEST1")) == before
        state = await admin(client, gateway, "/breakers")
        assert [p["practice_id"] for p in state["paused"]] == ["UKTEST1"]
        assert state["paused"][0]["note"] == "move"
        entry = await admin(client, gateway, "/practices/UKTEST1")
        assert entry["state"] == "paused"
        assert entry["pause"]["note"] == "move"

        pauses.write_text("{not json")  # refused: the pause stays in force

        async def refused() -> bool:
            return any(
                getattr(r, "fields", {}).get("event") == "pause_file_invalid"
                for r in caplog.records
            )

        await wait_until(refused, 10)
        assert (await call(client, gateway, "GET", path))[0] == 503

        _replace(pauses, {})

        async def served() -> bool:
            return (await call(client, gateway, "GET", path))[0] == 200

        await wait_until(served, 10)
        entry = await admin(client, gateway, "/practices/UKTEST1")
        assert entry["state"] == "available"
        assert entry["unavailable_periods"][-1]["cause"] == "paused"
        assert entry["unavailable_periods"][-1]["end"] is not None


def _replace(path: Path, practices: dict[str, Any]) -> None:
    """Swap the file in atomically, as Kubernetes does for a ConfigMap."""
    fresh = path.with_suffix(".new")
    fresh.write_text(json.dumps({"practices": practices}))
    fresh.replace(path)


def test_ten_thousand_practice_ids_cost_bounded_memory() -> None:
    """10,000 distinct practice ids through the ledger and the version book: both stay at
    their bounds, and the memory they hold is measured (printed for the README's note)."""
    ledger = Ledger(LedgerPolicy(max_entries=2000), SYSTEM_CLOCK.wall)
    versions = VersionBook(VersionPolicy(max_entries=2000), SYSTEM_CLOCK.monotonic)
    tracemalloc.start()
    for n in range(10_000):
        practice = f"UKMANY{n}"
        ledger.record_attempt(practice, Answer.OK, 0.1)
        versions.learn(practice, "13.860")
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(ledger) == 2000
    assert len(versions) == 2000
    print(f"ledger + versions after 10,000 ids, 2,000 held: {size / 1e6:.2f} MB", file=sys.stderr)
    assert size < 8_000_000
