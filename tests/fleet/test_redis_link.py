"""The Redis link against a real redis-server: it works, and it is never in the way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from gateway.fleet.redis_link import LinkState, Operation, RedisLink
from tests.audit import AUDIT
from tests.fleet.conftest import HoldingProxy, RedisServer, eventually

MakeLink = Callable[..., RedisLink]
LOGGER = "gateway.fleet.redis"


def transitions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


async def set_and_get(client: Redis) -> bytes | None:
    await client.set("k", b"v")
    value = await client.get("k")
    return value if isinstance(value, bytes) else None


# What a call returns when Redis cannot answer (typed like the real answer).
FALLBACK: bytes | None = b"fallback"


def fallback(value: bytes) -> bytes | None:
    """A local answer typed like Redis's (a GET may find nothing)."""
    return value


async def test_link_comes_up_and_answers(redis_server: RedisServer, make_link: MakeLink) -> None:
    """Started against a live Redis, the link comes up by itself, calls return real answers,
    the gauge says 1 and /status shows the URL without its password."""
    registry = CollectorRegistry()
    link = make_link(redis_server.url, registry=registry)
    assert await link.call(Operation.HEARTBEAT, set_and_get, FALLBACK) == b"fallback"
    await link.start()
    await eventually(lambda: link.up)
    assert await link.call(Operation.HEARTBEAT, set_and_get, FALLBACK) == b"v"
    assert registry.get_sample_value("exact_gateway_redis_up") == 1
    status = link.status()
    assert status["state"] == "up"
    assert status["url"] == f"redis://127.0.0.1:{redis_server.port}/0"


async def test_password_is_never_shown(
    tmp_path: Path, make_link: MakeLink, caplog: pytest.LogCaptureFixture
) -> None:
    """A password in the URL works, and a wrong one is one redis_down line that shows
    neither password; /status shows neither."""
    password = "redis-pw-7c1e0a"
    wrong = "redis-wrong-4b9d"
    AUDIT.secrets.update({password, wrong})
    server = RedisServer(tmp_path, password=password)
    server.start()
    try:
        good = make_link(server.url)
        await good.start()
        await eventually(lambda: good.up)
        bad = make_link(server.url.replace(password, wrong))
        await bad.start()
        await eventually(lambda: bad.state is LinkState.DOWN)
        assert bad.status()["last_error"] == "AuthenticationError"
        for link in (good, bad):
            assert password not in str(link.status())
            assert wrong not in str(link.status())
        assert transitions(caplog).count("redis_down") == 1
        assert password not in caplog.text
        assert wrong not in caplog.text
    finally:
        server.stop()


async def test_killed_redis_under_a_loop_of_calls(
    redis_server: RedisServer, make_link: MakeLink, caplog: pytest.LogCaptureFixture
) -> None:
    """redis-server killed under a loop of calls: every call returns (the fallback), the
    commands stop reaching the network at once, one line says down, the errors are counted,
    and a new redis-server on the same port brings the link back with one line saying up."""
    registry = CollectorRegistry()
    link = make_link(redis_server.url, registry=registry)
    await link.start()
    await eventually(lambda: link.up)
    results: list[tuple[bytes | None, float]] = []
    sent_while_down = 0
    stop = asyncio.Event()

    async def counted(client: Redis) -> bytes | None:
        nonlocal sent_while_down
        if link.state is LinkState.DOWN:
            sent_while_down += 1
        return await set_and_get(client)

    async def loop() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            value = await link.call(Operation.HEARTBEAT, counted, fallback(b"local"))
            results.append((value, time.perf_counter() - started))
            await asyncio.sleep(0.002)

    caplog.clear()
    task = asyncio.create_task(loop())
    try:
        await eventually(lambda: len(results) >= 20)
        redis_server.kill()
        await eventually(lambda: link.state is LinkState.DOWN)
        killed_at = len(results)
        await eventually(lambda: len(results) >= killed_at + 100)
        assert {value for value, _ in results[killed_at:]} == {b"local"}
        assert sent_while_down == 0, "no command is sent while the link is down"
        redis_server.start()
        await eventually(lambda: link.up)
        back_at = len(results)
        await eventually(lambda: len(results) >= back_at + 20)
    finally:
        stop.set()
        await task
    assert results[-1][0] == b"v"
    assert transitions(caplog) == ["redis_down", "redis_up"]
    assert registry.get_sample_value("exact_gateway_redis_up") == 1
    errors = sum(
        registry.get_sample_value("exact_gateway_redis_errors_total", {"operation": op.value}) or 0
        for op in Operation
    )
    assert errors >= 1
    slowest = max(duration for _, duration in results)
    print(f"\n{len(results)} calls, slowest {slowest * 1000:.1f} ms (time-out 250 ms)")


async def test_held_answers_time_out(
    holding_proxy: HoldingProxy, make_link: MakeLink, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis answers, but its answer does not arrive (a frozen or congested path): the call
    returns the fallback on its own time-out while the answer is still held, later calls do
    not even try, and the link comes back once answers flow again."""
    registry = CollectorRegistry()
    link = make_link(holding_proxy.url, registry=registry)
    await link.start()
    await eventually(lambda: link.up)
    caplog.clear()
    holding_proxy.hold()
    assert await link.call(Operation.VERDICT_READ, set_and_get, fallback(b"local")) == b"local"
    assert holding_proxy.held_bytes > 0, "Redis had answered; the call did not wait for it"
    assert link.state is LinkState.DOWN
    tried = False

    async def must_not_run(client: Redis) -> bytes:
        nonlocal tried
        tried = True
        return b"network"

    assert await link.call(Operation.VERDICT_READ, must_not_run, b"local") == b"local"
    assert not tried
    assert (
        registry.get_sample_value("exact_gateway_redis_errors_total", {"operation": "verdict_read"})
        == 1
    )
    holding_proxy.release()
    await eventually(lambda: link.up)
    assert await link.call(Operation.VERDICT_READ, set_and_get, fallback(b"local")) == b"v"
    assert transitions(caplog) == ["redis_down", "redis_up"]


async def test_a_sleeping_redis_does_not_hold_calls(
    redis_server: RedisServer, make_link: MakeLink
) -> None:
    """DEBUG SLEEP blocks the server: a call returns its fallback while the server is still
    asleep (its DEBUG SLEEP has not answered yet)."""
    link = make_link(redis_server.url)
    await link.start()
    await eventually(lambda: link.up)
    reader, writer = await asyncio.open_connection("127.0.0.1", redis_server.port)
    writer.write(b"DEBUG SLEEP 5\r\n")
    await writer.drain()
    woke = asyncio.create_task(reader.readline())
    # Until the server has read the DEBUG SLEEP, calls may still be answered: call until one
    # is not (the server is then asleep), and see that its sleep had not ended.
    while await link.call(Operation.HEARTBEAT, set_and_get, fallback(b"local")) == b"v":
        await asyncio.sleep(0.01)
    assert not woke.done(), "the call returned while the server was still asleep"
    assert link.state is LinkState.DOWN
    assert await woke == b"+OK\r\n"
    writer.close()
    await eventually(lambda: link.up)


async def test_nonsense_is_not_redis(make_link: MakeLink, caplog: pytest.LogCaptureFixture) -> None:
    """A peer that answers HTTP instead of RESP never brings the link up: one down line."""

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = make_link(f"redis://127.0.0.1:{port}/0")
    await link.start()
    await eventually(lambda: link.state is LinkState.DOWN and link.status()["last_error"])
    await eventually(lambda: link.status()["next_attempt_seconds"] is not None)
    assert not link.up
    assert transitions(caplog) == ["redis_down"]
    server.close()


async def test_an_error_reply_keeps_the_link_up(
    redis_server: RedisServer, make_link: MakeLink
) -> None:
    """WRONGTYPE is one call refused, not Redis down: fallback, counted, link stays up."""
    registry = CollectorRegistry()
    link = make_link(redis_server.url, registry=registry)
    await link.start()
    await eventually(lambda: link.up)

    async def wrong_type(client: Redis) -> int:
        await client.set("text", b"x")
        return int(await client.lpush("text", b"y"))

    assert await link.call(Operation.IDEMPOTENCY_CLAIM, wrong_type, -1) == -1
    assert link.up
    assert link.status()["last_error"] == "ResponseError"
    assert (
        registry.get_sample_value(
            "exact_gateway_redis_errors_total", {"operation": "idempotency_claim"}
        )
        == 1
    )


async def test_never_started_redis(tmp_path: Path, make_link: MakeLink) -> None:
    """No Redis at start: the gateway starts anyway, the link reports down and keeps trying,
    and comes up when Redis appears."""
    server = RedisServer(tmp_path)
    link = make_link(server.url)
    await link.start()
    await eventually(lambda: link.state is LinkState.DOWN)
    assert await link.call(Operation.HEARTBEAT, set_and_get, fallback(b"local")) == b"local"
    server.start()
    try:
        await eventually(lambda: link.up)
    finally:
        server.stop()
