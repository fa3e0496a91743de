"""Issue 14 at fleet scale: three gateway processes, one real redis-server, the sandbox as
EXACT on a real port; every count read from the sandbox's side."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.fakes import GatewayProcess, control
from tests.fleet.conftest import RedisServer
from tests.fleet.fleet_harness import (
    CONTACT,
    DETAILS,
    Fleet,
    fleet_env,
    percentile,
    until,
)

CONSECUTIVE = 5  # BREAKER_CONSECUTIVE_FAILURES' default: one replica's breaker worth


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    async with aiohttp.ClientSession() as client:
        crew = Fleet(client)
        try:
            yield crew
        finally:
            await crew.close()


def sandbox_url(sandbox: TestServer) -> str:
    return str(sandbox.make_url("")).rstrip("/")


async def practice(sandbox: TestServer, practice_id: str) -> dict[str, object]:
    answer: dict[str, object] = await control(sandbox, "GET", f"/practices/{practice_id}")
    return answer


async def attempts(sandbox: TestServer, practice_id: str) -> int:
    return int(str((await practice(sandbox, practice_id))["attempts"]))


async def started(fleet: Fleet, env: dict[str, str], count: int) -> list[GatewayProcess]:
    """``count`` replicas, each seeing Redis up and the whole fleet."""
    replicas = await fleet.spawn(env, count)
    total = len([r for r in fleet.replicas if r.process.returncode is None])

    async def all_counted() -> bool:
        for replica in replicas:
            status = await fleet.fleet_status(replica)
            if status["redis"]["state"] != "up" or status["live_replicas"] != total:
                return False
        return True

    await until(all_counted)
    return replicas


async def test_an_offline_practice_costs_one_replicas_breaker_and_recovery_reaches_all(
    sandbox: TestServer, redis_server: RedisServer, fleet: Fleet
) -> None:
    """The first replica's breaker opens after its own attempts; the two others answer
    circuit_open without a single attempt (within 1 s of the opening, by the verdict's
    timestamps), and after recovery all three close."""
    await control(sandbox, "PUT", "/practices/UKFLEET1", {"behaviour": "offline"})
    env = fleet_env(
        sandbox_url(sandbox), redis_server.url, breaker_open_seconds="2", retry_max_attempts="1"
    )
    first, second, third = await started(fleet, env, 3)
    path = DETAILS.format("UKFLEET1")
    answers: list[tuple[int, str | None]] = []
    while not answers or answers[-1] != (503, "circuit_open"):
        answers.append(await fleet.get(first, path))
        assert len(answers) <= CONSECUTIVE + 1, answers
    spent = await attempts(sandbox, "UKFLEET1")
    assert spent <= CONSECUTIVE
    opened = await fleet.breaker(first, "UKFLEET1")
    assert opened is not None

    async def heard() -> bool:
        return all([await fleet.breaker(r, "UKFLEET1") is not None for r in (second, third)])

    await until(heard)
    for replica in (second, third):
        assert await fleet.get(replica, path) == (503, "circuit_open")
        shared = await fleet.breaker(replica, "UKFLEET1")
        assert shared is not None
        assert shared["opened_at_unix"] - opened["opened_at_unix"] < 1.0
    assert await attempts(sandbox, "UKFLEET1") == spent  # the verdict cost the practice nothing

    await control(sandbox, "PUT", "/practices/UKFLEET1", {"behaviour": "healthy"})

    async def all_closed() -> bool:
        return all([await fleet.breaker(r, "UKFLEET1") is None for r in fleet.replicas])

    await until(all_closed)
    for replica in (first, second, third):
        assert await fleet.get(replica, path) == (200, None)
    # One probe closed the first replica to probe; the "closed" verdict closed the others,
    # each replica probing at most once.
    assert await attempts(sandbox, "UKFLEET1") - spent <= 3 + 3


async def test_round_robin_over_an_offline_practice_costs_about_one_breaker(
    sandbox: TestServer, redis_server: RedisServer, fleet: Fleet
) -> None:
    """Requests to an offline practice spread over three replicas in turn: the fleet counts
    EXACT's 503s together, so the practice sees at most one breaker's worth of attempts plus
    the few in flight while the count and the verdict travel, and all three answer
    circuit_open afterwards (without the shared count it would be up to 3 x 5 + 1)."""
    await control(sandbox, "PUT", "/practices/UKFLEET3", {"behaviour": "offline"})
    env = fleet_env(
        sandbox_url(sandbox), redis_server.url, breaker_open_seconds="60", retry_max_attempts="1"
    )
    replicas = await started(fleet, env, 3)
    path = DETAILS.format("UKFLEET3")
    answers: list[tuple[int, str | None]] = []
    while not answers or answers[-1] != (503, "circuit_open"):
        answers.append(await fleet.get(replicas[len(answers) % 3], path))
        assert len(answers) <= 3 * CONSECUTIVE + 1, answers

    async def all_open() -> bool:
        return all([await fleet.breaker(r, "UKFLEET3") is not None for r in replicas])

    await until(all_open)
    for replica in replicas:
        assert await fleet.get(replica, path) == (503, "circuit_open")
    assert await attempts(sandbox, "UKFLEET3") <= CONSECUTIVE + len(replicas) - 1


async def test_a_pause_set_through_one_replica_applies_on_all_and_lifts_on_all(
    sandbox: TestServer, redis_server: RedisServer, fleet: Fleet
) -> None:
    """PUT /pauses/{id} on one replica's admin port: all three answer 503 practice_paused
    (without an attempt at the practice); DELETE through another: all three serve it again.
    A body that is not a valid pause is refused with what is wrong; a gateway without Redis
    refuses to set one and says why."""
    env = fleet_env(sandbox_url(sandbox), redis_server.url)
    replicas = await started(fleet, env, 3)
    path = DETAILS.format("UKTEST1")
    for replica in replicas:
        assert await fleet.get(replica, path) == (200, None)

    async def admin_write(
        replica: GatewayProcess, method: str, practice_id: str, body: object = None
    ) -> tuple[int, dict[str, object]]:
        url = f"http://127.0.0.1:{replica.admin_port}/pauses/{practice_id}"
        async with fleet.client.request(method, url, json=body) as response:
            text = await response.text()
            shown = await response.json(content_type=None) if text else {}
            return response.status, shown

    wrong, problem = await admin_write(replicas[0], "PUT", "UKTEST1", {"pause_until": "soon"})
    assert (wrong, problem["reason"]) == (400, "pause_invalid")
    assert "RFC 3339" in str(problem["detail"])
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    status, shown = await admin_write(
        replicas[0], "PUT", "uktest1", {"pause_until": later, "note": "server move"}
    )
    assert (status, shown["practice_id"], shown["note"]) == (200, "UKTEST1", "server move")

    async def answers_all(expected: tuple[int, str | None]) -> bool:
        return all([await fleet.get(r, path) == expected for r in replicas])

    # Polling itself reaches the practice through a replica that has not heard yet: count
    # from the moment all three answer paused, then ask each again.
    await until(lambda: answers_all((503, "practice_paused")))
    spent = await attempts(sandbox, "UKTEST1")
    assert await answers_all((503, "practice_paused"))
    assert await attempts(sandbox, "UKTEST1") == spent
    paused = (await fleet.admin(replicas[2], "/breakers"))["paused"]
    assert [(p["practice_id"], p["note"]) for p in paused] == [("UKTEST1", "server move")]

    assert (await admin_write(replicas[1], "DELETE", "UKTEST1"))[0] == 204
    await until(lambda: answers_all((200, None)))

    [alone] = await fleet.spawn(fleet_env(sandbox_url(sandbox), None))
    off, problem = await admin_write(alone, "PUT", "UKTEST1", {"pause_until": later})
    assert (off, problem["reason"]) == (409, "fleet_pauses_off")


async def burst_until_peak(
    fleet: Fleet, replicas: list[GatewayProcess], sandbox: TestServer, practice_id: str, peak: int
) -> int:
    """Bursts of 12 requests per replica at once, until the practice's peak in flight
    reaches ``peak`` (asserting after each that it never went beyond)."""
    path = DETAILS.format(practice_id)
    seen = 0
    for _ in range(10):
        calls = [fleet.get(replica, path) for replica in replicas for _ in range(12)]
        results = await asyncio.gather(*calls)
        assert {status for status, _ in results} <= {200, 503}
        assert {error for _, error in results} <= {None, "practice_busy"}
        seen = int(str((await practice(sandbox, practice_id))["peak_inflight"]))
        assert seen <= peak
        if seen == peak:
            break
    return seen


async def test_practice_concurrency_holds_across_replicas_and_returns_to_the_last_one(
    sandbox: TestServer, redis_server: RedisServer, fleet: Fleet
) -> None:
    """PRACTICE_CONCURRENCY=9 over three replicas: never more than 9 at the practice; once
    two stop, the last one alone gets all 9."""
    for practice_id in ("UKFLEETSLOW1", "UKFLEETSLOW2"):
        body = {"behaviour": "slow", "latency_s": 0.6}
        await control(sandbox, "PUT", f"/practices/{practice_id}", body)
    env = fleet_env(sandbox_url(sandbox), redis_server.url, practice_concurrency="9")
    replicas = await started(fleet, env, 3)
    for replica in replicas:
        assert (await fleet.fleet_status(replica))["practice_concurrency"] == 3
    assert await burst_until_peak(fleet, replicas, sandbox, "UKFLEETSLOW1", 9) == 9

    last = replicas[0]
    for replica in replicas[1:]:
        await fleet.stop(replica)

    async def alone() -> bool:
        return (await fleet.fleet_status(last))["practice_concurrency"] == 9

    await until(alone)
    assert await burst_until_peak(fleet, [last], sandbox, "UKFLEETSLOW2", 9) == 9


async def test_a_keyed_post_retried_through_another_replica_reaches_the_practice_once(
    sandbox: TestServer, redis_server: RedisServer, fleet: Fleet
) -> None:
    """The caller's retry lands on another replica: the practice gets one message, and the
    retry is answered with the first answer's status, marked replayed."""
    env = fleet_env(sandbox_url(sandbox), redis_server.url)
    first, second, third = await started(fleet, env, 3)
    path = CONTACT.format("UKTEST1")
    status, _ = await fleet.post(first, path, "order-7")
    assert 200 <= status < 300
    for replica in (second, third):
        again, headers = await fleet.post(replica, path, "order-7")
        assert again == status
        assert headers.get("Idempotent-Replayed") == "true"
    messages = await control(sandbox, "GET", "/messages")
    assert messages["total"] == 1
    # The same key for another request, on another replica: refused, never sent.
    other, headers = await fleet.post(second, CONTACT.format("UKTEST2"), "order-7")
    assert (other, headers.get("X-Gateway-Error")) == (422, "idempotency_key_mismatch")
    assert (await control(sandbox, "GET", "/messages"))["total"] == 1


async def test_redis_killed_under_load_fails_no_request_and_comes_back(
    sandbox: TestServer, redis_server: RedisServer, fleet: Fleet
) -> None:
    """Steady load through three replicas while redis-server is killed and restarted: every
    request succeeds, every replica falls back and reconnects by itself (p99 printed)."""
    env = fleet_env(sandbox_url(sandbox), redis_server.url)
    replicas = await started(fleet, env, 3)
    path = DETAILS.format("UKTEST1")
    phase = "before"
    latencies: dict[str, list[float]] = {"before": [], "without": [], "after": []}
    failures: list[tuple[int, str | None]] = []
    stop = asyncio.Event()

    async def worker(replica: GatewayProcess) -> None:
        while not stop.is_set():
            sent = time.perf_counter()
            status, error = await fleet.get(replica, path)
            latencies[phase].append(time.perf_counter() - sent)
            if status != 200:
                failures.append((status, error))

    workers = [asyncio.create_task(worker(r)) for r in replicas for _ in range(2)]

    async def enough(count: int) -> bool:
        return len(latencies[phase]) >= count

    try:
        await until(lambda: enough(200))
        redis_server.kill()
        phase = "without"

        async def all_down() -> bool:
            states = [(await fleet.fleet_status(r))["redis"]["state"] for r in replicas]
            return all(state == "down" for state in states)

        await until(all_down)
        await until(lambda: enough(200))
        redis_server.start()

        async def all_up() -> bool:
            for replica in replicas:
                status = await fleet.fleet_status(replica)
                if status["redis"]["state"] != "up" or status["live_replicas"] != 3:
                    return False
            return True

        await until(all_up)
        phase = "after"
        await until(lambda: enough(200))
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert failures == []
    for name, values in latencies.items():
        print(
            f"redis {name}: {len(values)} requests, p50 {percentile(values, 0.5) * 1000:.1f} ms,"
            f" p99 {percentile(values, 0.99) * 1000:.1f} ms"
        )
    metrics_url = f"http://127.0.0.1:{replicas[0].admin_port}/metrics"
    async with fleet.client.get(metrics_url) as response:
        text = await response.text()
    assert "exact_gateway_redis_up 1.0" in text
    assert 'exact_gateway_redis_errors_total{operation="connect"}' in text


async def test_a_restarted_gateway_answers_circuit_open_from_its_snapshot(
    sandbox: TestServer, fleet: Fleet, tmp_path: Path
) -> None:
    """Stopped in the middle of a practice's outage and started again (no Redis): the first
    request for the practice is answered circuit_open, with no attempt at the practice."""
    await control(sandbox, "PUT", "/practices/UKFLEET2", {"behaviour": "offline"})
    state = tmp_path / "state.json"
    env = fleet_env(
        sandbox_url(sandbox),
        None,
        state_file=str(state),
        state_save_interval_seconds="0.2",
        breaker_open_seconds="120",
        retry_max_attempts="1",
    )
    [before] = await fleet.spawn(env)
    path = DETAILS.format("UKFLEET2")
    while (await fleet.get(before, path))[1] != "circuit_open":
        assert await attempts(sandbox, "UKFLEET2") <= CONSECUTIVE
    await fleet.stop(before)
    spent = await attempts(sandbox, "UKFLEET2")

    [after] = await fleet.spawn(env)
    assert await fleet.get(after, path) == (503, "circuit_open")
    assert await attempts(sandbox, "UKFLEET2") == spent
    restored = await fleet.breaker(after, "UKFLEET2")
    assert restored is not None
    assert restored["next_probe_in_seconds"] > 60  # its saved schedule, not a fresh one
    ledger = await fleet.admin(after, "/practices/UKFLEET2")
    assert ledger["state"] == "unavailable"
    assert any('"event":"state_file_restored"' in line for line in after.log_lines)


async def test_a_corrupt_state_file_is_reported_once_and_ignored(
    sandbox: TestServer, fleet: Fleet, tmp_path: Path
) -> None:
    """Garbage in the state file: one state_file_ignored line, a gateway that serves, and a
    good file written over it."""
    state = tmp_path / "state.json"
    state.write_bytes(b'{"format": "exact-gateway-state/1", "gateway": \x00\xff')
    env = fleet_env(
        sandbox_url(sandbox), None, state_file=str(state), state_save_interval_seconds="0.2"
    )
    [gateway] = await fleet.spawn(env)
    assert await fleet.get(gateway, DETAILS.format("UKTEST1")) == (200, None)
    ignored = [line for line in gateway.log_lines if "state_file_ignored" in line]
    assert len(ignored) == 1

    async def rewritten() -> bool:
        return state.read_bytes().startswith(b'{"format":"exact-gateway-state/1"')

    await until(rewritten)
