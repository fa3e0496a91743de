"""10,000 requests with random paths, ids, query strings, practice ids and methods leave the
number of exported series bounded, and no label carries anything the callers sent."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from gateway.exact_api import ROUTES as EXACT_ROUTES
from gateway.metrics import ATTEMPT_BUCKETS, REQUEST_BUCKETS
from gateway.routes import KNOWN_METHODS
from tests.fakes import GatewayFactory, ScriptedUpstream, gateway_settings, proxy_url
from tests.observability.conftest import scrape

REQUESTS = 10_000
CONCURRENCY = 50
# The route label's whole vocabulary: the EXACT route table's templates, and "other".
ROUTES = frozenset({route.template for route in EXACT_ROUTES} | {"other"})
METHODS = frozenset(KNOWN_METHODS | {"other"})
# Methods aiohttp's parser knows but the gateway does not label by name, and invented ones
# (aiohttp may refuse those itself with a 400 before the gateway sees them).
ODD_METHODS = ("PURGE", "PROPFIND", "MKCOL", "LOCK", "SEARCH", "FROBNICATE", "XZQW")
# upstream 200; bad_request; method_not_allowed (the odd methods); hang-ups; busy
STATUSES = frozenset({"200", "400", "405", "499", "503"})


class Caller:
    """Random requests, remembering every caller-chosen string that must never become a
    label: ids, query keys and values, practice ids. Each is distinctive (a letter prefix
    or a dashed uuid) so that it cannot match a number in the exposition by chance."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.sent: set[str] = set()

    def token(self, prefix: str) -> str:
        value = f"{prefix}{self.rng.getrandbits(48):012x}"
        self.sent.add(value)
        return value

    def record_id(self) -> str:
        value = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        self.sent.add(value)
        return value

    def practice(self) -> str:
        choice = self.rng.random()
        if choice < 0.2:
            return self.rng.choice(["UKTEST1", "WFEVAL"])
        if choice < 0.8:
            return self.token(self.rng.choice(["pr", "PR-", "p_"]))
        # Not plain identifiers: refused with 400, never forwarded.
        bad = self.token("bad")
        return self.rng.choice(
            [f"{bad}.x", f"-{bad}", f"{bad}%2fx", f"{bad}%20x", "x" * 65 + bad, f"{bad}~"]
        )

    def path(self) -> str:
        practice = f"/v1/Practices/{self.practice()}"
        shape = self.rng.randrange(12)
        if shape == 0:
            path = "/v1/Subscriptions/active"
        elif shape == 1:
            path = f"/{self.token('seg')}/{self.record_id()}"
        elif shape == 2:
            path = f"/v1/{self.token('Res')}/{self.record_id()}/{self.token('sub')}"
        elif shape == 3:
            path = f"{practice}/{self.token('Unknown')}/{self.record_id()}"
        elif shape == 4:
            path = f"{practice}/Patients/{self.record_id()}/{self.token('extra')}"
        else:
            resource = self.rng.choice(
                ["Patients", "Appointments", "Payors", "Practitioners", "patients"]
            )
            path = self.rng.choice(
                [
                    f"{practice}/{resource}",
                    f"{practice}/{resource}/{self.record_id()}",
                    f"{practice}/Patients/{self.record_id()}/ContactDetails",
                    f"{practice}/details",
                ]
            )
        if self.rng.random() < 0.7:
            pairs = [
                f"{self.rng.choice(['patientId', 'q', self.token('k')])}={self.token('v')}"
                for _ in range(self.rng.randint(1, 3))
            ]
            path += "?" + "&".join(pairs)
        return path

    def method(self) -> str:
        if self.rng.random() < 0.85:
            return self.rng.choice(sorted(KNOWN_METHODS))
        return self.rng.choice(ODD_METHODS)


async def test_random_traffic_leaves_the_series_bounded(
    upstream: ScriptedUpstream, start_gateway: GatewayFactory
) -> None:
    upstream.record_bodies = False
    gateway = await start_gateway(gateway_settings(upstream.url))
    caller = Caller(random.Random(20240605))
    requests = [(caller.method(), caller.path()) for _ in range(REQUESTS)]
    statuses: dict[int, int] = {}
    started = time.monotonic()
    counts = []

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as client:

        async def worker(mine: list[tuple[str, str]]) -> None:
            for method, path in mine:
                url = URL(proxy_url(gateway, path), encoded=True)
                data = b'{"note": "x"}' if method in {"POST", "PUT", "PATCH"} else None
                async with client.request(method, url, data=data) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1

        for half in (requests[: REQUESTS // 2], requests[REQUESTS // 2 :]):
            await asyncio.gather(*(worker(half[i::CONCURRENCY]) for i in range(CONCURRENCY)))
            exposition = await scrape(gateway)
            series = [line for line in exposition.splitlines() if line and line[0] != "#"]
            counts.append(len(series))
    elapsed = time.monotonic() - started

    per_family: dict[str, int] = {}
    for line in series:
        name = line.split("{", 1)[0].split(" ", 1)[0]
        per_family[name] = per_family.get(name, 0) + 1
    print(
        f"\n{REQUESTS} random requests in {elapsed:.1f} s ({sorted(statuses.items())}),"
        f" {len(caller.sent)} distinct caller-chosen strings: {counts[1]} series exported"
        f" ({counts[0]} after the first half); the largest families:"
        f" {sorted(per_family.items(), key=lambda item: -item[1])[:6]}"
    )
    assert sum(statuses.values()) == REQUESTS
    assert statuses.get(200, 0) > REQUESTS / 2  # most of it really went through
    # Twice the traffic, with all-new random strings, adds (almost) nothing: the series come
    # from the label vocabularies, not from what callers send.
    assert counts[1] - counts[0] <= counts[0] * 0.05

    # Nothing the callers chose is anywhere in the exposition, label or otherwise.
    leaked = sorted(value for value in caller.sent if value in exposition)
    assert not leaked, leaked[:10]
    assert not [line for line in series if "?" in line]  # no query string, whatever its keys

    # Every label value comes from a fixed vocabulary.
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = sample.labels
            if "method" in labels:
                assert labels["method"] in METHODS, sample
            if "route" in labels:
                assert labels["route"] in ROUTES, sample
            if "status_code" in labels:
                assert labels["status_code"] in STATUSES, sample
            if "outcome" in labels:
                assert labels["outcome"] in STATUSES, sample
            assert "practice_id" not in labels, sample  # every breaker stayed closed

    # The bound: the label vocabularies' product, whatever the traffic. Per (method, route,
    # status) the caller families hold the counter and the histogram, each with _created;
    # per (route, outcome) the attempt counter, and per route the attempt histogram.
    per_request_combo = 2 + (len(REQUEST_BUCKETS) + 1) + 3
    per_attempt_combo = 2
    per_attempt_route = (len(ATTEMPT_BUCKETS) + 1) + 3
    bound = (
        len(METHODS) * len(ROUTES) * len(STATUSES) * per_request_combo
        + len(ROUTES) * len(STATUSES) * per_attempt_combo
        + len(ROUTES) * per_attempt_route
        + 200  # process, python, token, breaker counts, retry and rejection reasons
    )
    print(f"bound from the label vocabularies: {bound}")
    assert len(series) < bound
    # The fixed ceiling for this traffic. Almost every line is a caller histogram: with the
    # upstream answering 200, the combinations are 8 methods x 13 routes with 200, and
    # 8 methods x "other" with 400 (refused targets): 112 x 21 lines = 2,352, plus about 100
    # lines of other families, plus 23 for each rare (method, route) answered 503
    # practice_busy or 499. 3,000 leaves room for about 25 of those; one random id becoming
    # a label would add 21 lines per request and blow through it at once.
    assert len(series) < 3_000
