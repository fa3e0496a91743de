"""Verdicts, replica counts and idempotency records shared between links to a real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from redis.asyncio import Redis

from gateway.fleet.idempotency_records import ClaimOutcome, IdempotencyRecords
from gateway.fleet.namespace import gateway_identity, new_replica_id, redis_prefix
from gateway.fleet.redis_link import RedisLink
from gateway.fleet.replicas import Replicas
from gateway.fleet.verdicts import VerdictCause, Verdicts
from tests.fleet.conftest import RedisServer, eventually

MakeLink = Callable[..., RedisLink]
PREFIX = redis_prefix(gateway_identity("qa", "partner-a"))
Heard = list[tuple[str, float | None, str | None]]


async def started_link(make_link: MakeLink, url: str) -> RedisLink:
    link = make_link(url)
    await link.start()
    await eventually(lambda: link.up)
    return link


def listener(link: RedisLink, heard: Heard, prefix: str = PREFIX) -> Verdicts:
    verdicts = Verdicts(
        link,
        prefix=prefix,
        replica_id=new_replica_id(),
        on_verdict=lambda p, until, cause: heard.append((p, until, cause)),
    )
    verdicts.start()
    return verdicts


async def test_verdicts_travel_between_replicas(
    redis_server: RedisServer, make_link: MakeLink
) -> None:
    """A opens (503) and closes UKOFFLINE1: B hears both, with A's wall-clock time and
    cause; A does not hear itself; a fleet of another partner hears nothing."""
    heard_a: Heard = []
    heard_b: Heard = []
    heard_other: Heard = []
    a = listener(await started_link(make_link, redis_server.url), heard_a)
    b = listener(await started_link(make_link, redis_server.url), heard_b)
    other_prefix = redis_prefix(gateway_identity("qa", "partner-b"))
    other = listener(await started_link(make_link, redis_server.url), heard_other, other_prefix)
    await subscribers(redis_server, a.channel, 2)
    until = time.time() + 60
    a.announce_unavailable("UKOFFLINE1", until, VerdictCause.STATUS_503)
    await eventually(lambda: bool(heard_b))
    assert heard_b[0] == ("UKOFFLINE1", until, "503")
    a.announce_closed("UKOFFLINE1")
    await eventually(lambda: ("UKOFFLINE1", None, None) in heard_b)
    assert heard_a == []
    assert heard_other == []
    for verdicts in (a, b, other):
        await verdicts.close()


async def subscribers(server: RedisServer, channel: str, count: int) -> None:
    """Wait until Redis counts ``count`` subscribers on ``channel``."""
    client = Redis.from_url(server.url)
    deadline = time.monotonic() + 20
    try:
        while dict(await client.pubsub_numsub(channel)).get(channel.encode(), 0) < count:
            assert time.monotonic() < deadline, "subscribers did not arrive"
            await asyncio.sleep(0.01)
    finally:
        await client.aclose()


async def test_a_late_replica_reads_the_key(redis_server: RedisServer, make_link: MakeLink) -> None:
    """A replica that starts after the verdict was published reads it from its key (with
    the key's TTL running out at T); a verdict already over is not delivered."""
    a = Verdicts(
        await started_link(make_link, redis_server.url),
        prefix=PREFIX,
        replica_id=new_replica_id(),
        on_verdict=lambda *_: None,
    )
    until = time.time() + 30
    assert await a.publish_unavailable("UKTEST2", until, VerdictCause.STATUS_504)
    assert not await a.publish_unavailable("UKTEST3", time.time() - 1, VerdictCause.STATUS_503)
    client = Redis.from_url(redis_server.url)
    ttl_ms = await client.pttl(f"{PREFIX}:verdict:UKTEST2")
    await client.aclose()
    assert 0 < ttl_ms <= 30_000
    heard: Heard = []
    late = listener(await started_link(make_link, redis_server.url), heard)
    await eventually(lambda: bool(heard))
    assert heard == [("UKTEST2", until, "504")]
    await late.close()


async def test_malformed_verdicts_are_dropped(
    redis_server: RedisServer, make_link: MakeLink
) -> None:
    """Hostile messages on the channel (not JSON, huge, a path as practice id, NaN, a
    time a year ahead, an unknown cause) are dropped; the far-future one is not, but is
    shortened to max_ahead; a valid one after them still arrives."""
    heard: Heard = []
    link = await started_link(make_link, redis_server.url)
    verdicts = listener(link, heard)
    await subscribers(redis_server, verdicts.channel, 1)
    replica = "0123456789abcdef"
    now = time.time()

    def message(**changes: object) -> bytes:
        base = {"v": 1, "practice_id": "UKX1", "until": now + 60, "cause": "503"}
        return json.dumps({**base, "replica": replica, **changes}).encode()

    hostile = [
        b"not json",
        b"[" * 100_000,
        message(practice_id="../etc/passwd"),
        message(practice_id="A" * 65),
        message(until="soon"),
        message(until=True),
        b'{"v":1,"practice_id":"UKX1","until":NaN,"cause":"503","replica":"0123456789abcdef"}',
        message(cause="timeout"),
        message(cause=None),
        message(v=2),
        message(replica="me"),
        message(extra=1),
        message(practice_id="UKX1" + " " * 600),
        message(until=None, cause="503"),
    ]
    client = Redis.from_url(redis_server.url)
    for data in hostile:
        await client.publish(verdicts.channel, data)
    await client.publish(verdicts.channel, message(until=now + 10 * 365 * 86400))
    await client.publish(verdicts.channel, message(practice_id="UKGOOD1"))
    await client.aclose()
    await eventually(lambda: any(p == "UKGOOD1" for p, _, _ in heard))
    assert verdicts.dropped == len(hostile)
    assert [p for p, _, _ in heard] == ["UKX1", "UKGOOD1"]
    far = heard[0][1]
    assert far is not None
    assert far <= time.time() + 300
    await verdicts.close()


async def test_replica_shares(redis_server: RedisServer, make_link: MakeLink) -> None:
    """Three replicas each get a third of 9; after two stop, the last one gets all 9; a
    replica that dies without leaving drops out after the TTL; without Redis, the full limit."""
    fleet = [
        Replicas(
            await started_link(make_link, redis_server.url),
            prefix=PREFIX,
            replica_id=new_replica_id(),
            heartbeat=0.1,
            ttl=1.0,
        )
        for _ in range(3)
    ]
    for replica in fleet:
        await replica.start()
    await eventually(lambda: all(r.live_replicas() == 3 for r in fleet))
    assert [r.share(9) for r in fleet] == [3, 3, 3]
    assert fleet[0].share(2) == 1, "never below one"
    await fleet[1].close()
    await fleet[2].close()
    await eventually(lambda: fleet[0].live_replicas() == 1)
    assert fleet[0].share(9) == 9
    # A crashed replica: its entry stays until the TTL passes.
    crashed = Replicas(
        await started_link(make_link, redis_server.url), prefix=PREFIX, replica_id=new_replica_id()
    )
    assert await crashed.beat() == 2
    await eventually(lambda: fleet[0].live_replicas() == 2)
    await eventually(lambda: fleet[0].live_replicas() == 1)
    redis_server.kill()
    await eventually(lambda: fleet[0].live_replicas() == 1 and not fleet[0]._link.up)
    assert fleet[0].share(9) == 9
    await fleet[0].close()


async def test_idempotency_claim_across_replicas(
    redis_server: RedisServer, make_link: MakeLink
) -> None:
    """Two replicas: one claims, the other sees in flight, then done with the status only,
    or mismatch for another request; release frees the key; Redis holds no key or request
    in the clear."""
    secret = b"fleet-secret"
    a = IdempotencyRecords(
        await started_link(make_link, redis_server.url),
        prefix=PREFIX,
        replica_id=new_replica_id(),
        ttl=60,
        secret=secret,
    )
    b = IdempotencyRecords(
        await started_link(make_link, redis_server.url),
        prefix=PREFIX,
        replica_id=new_replica_id(),
        ttl=60,
        secret=secret,
    )
    key, fp = "order-7f3a", "sha256-of-POST-/v1/Practices/UKTEST1/Contact"
    assert (await a.claim(key, fp)).outcome is ClaimOutcome.CLAIMED
    assert (await b.claim(key, fp)).outcome is ClaimOutcome.IN_FLIGHT
    assert (await b.claim(key, "another request")).outcome is ClaimOutcome.MISMATCH
    assert not await b.complete(key, fp, 201), "only the claimant completes"
    assert await a.complete(key, fp, 201)
    done = await b.claim(key, fp)
    assert (done.outcome, done.status) == (ClaimOutcome.DONE, 201)
    assert not await a.release(key, fp), "a done record is never released"
    # A released claim lets the next request be the first.
    assert (await b.claim("k2", fp)).outcome is ClaimOutcome.CLAIMED
    assert await b.release("k2", fp)
    assert (await a.claim("k2", fp)).outcome is ClaimOutcome.CLAIMED
    client = Redis.from_url(redis_server.url)
    keys = [bytes(k) for k in await client.keys("*") if isinstance(k, bytes)]
    values = [await client.get(k) for k in keys]
    stored = b"".join(
        k + (v if isinstance(v, bytes) else b"") for k, v in zip(keys, values, strict=True)
    )
    ttl_ms = await client.pttl((await client.keys("*idem*"))[0])
    await client.aclose()
    assert b"order-7f3a" not in stored
    assert b"UKTEST1" not in stored
    assert 0 < ttl_ms <= 60_000


async def test_idempotency_records_never_in_the_way(
    redis_server: RedisServer, make_link: MakeLink
) -> None:
    """Redis gone: claim says UNAVAILABLE (decide locally); a garbage record in Redis reads
    as in flight (never sent twice)."""
    link = await started_link(make_link, redis_server.url)
    records = IdempotencyRecords(
        link, prefix=PREFIX, replica_id=new_replica_id(), ttl=60, secret=b"s"
    )
    client = Redis.from_url(redis_server.url)
    await client.set(records._key("junk"), b"\xff{not json")
    await client.set(records._key("big"), b"x" * 10_000)
    await client.aclose()
    assert (await records.claim("junk", "fp")).outcome is ClaimOutcome.IN_FLIGHT
    assert (await records.claim("big", "fp")).outcome is ClaimOutcome.IN_FLIGHT
    redis_server.kill()
    assert (await records.claim("new", "fp")).outcome is ClaimOutcome.UNAVAILABLE
    assert not await records.complete("new", "fp", 200)


async def test_subscriber_comes_back_after_redis_restarts(
    redis_server: RedisServer, make_link: MakeLink
) -> None:
    """Redis killed and started again (empty): the subscriber subscribes again by itself
    and hears the next verdict."""
    heard: Heard = []
    a = listener(await started_link(make_link, redis_server.url), [])
    b_link = await started_link(make_link, redis_server.url)
    b = listener(b_link, heard)
    await subscribers(redis_server, a.channel, 2)
    redis_server.kill()
    await eventually(lambda: not b_link.up)
    redis_server.start()
    await eventually(lambda: b_link.up)
    await subscribers(redis_server, a.channel, 2)
    until = time.time() + 60
    a.announce_unavailable("UKBACK1", until, VerdictCause.STATUS_503)
    await eventually(lambda: ("UKBACK1", until, "503") in heard)
    await a.close()
    await b.close()
