"""The practice watch: learns what the gateway knows of each practice and admits requests.

EXACT is one host relaying to thousands of on-premises servers; a generic proxy sees one host.
This is where the gateway uses what it knows of each server behind it:

* **Admission** (one question before a request's attempts): paused by an operator → 503
  ``practice_paused`` with ``Retry-After``; not on a fresh subscription list, even after one
  re-check → 403 ``practice_not_subscribed``; a known EXACT version below the route's minimum
  → 400 ``practice_version_too_old``. Each mirrors what EXACT itself would answer, with our
  reason. Anything unknown is forwarded (fail open).
* **Versions** are learnt from GetPracticeDetails answers passing through (:meth:`tap`) and,
  when a request needs one that is not known, by a look-up of our own in the background.
  Only routes whose minimum is above the API's own baseline trigger a look-up: a practice
  below the baseline cannot answer GetPracticeDetails at all, so a look-up could only ever
  prove it good enough for the baseline.
* **Subscriptions** are polled with ``productsubscription.get``; practices that leave are
  forgotten by the breakers, the version book and the ledger.
* **Synthetic probes**: with ``practice.get``, a practice breaker's half-open probe is the
  gateway's own ``GET …/details`` (sent when a caller finds the breaker due, or when the
  periodic scan does), never a caller's request.
* **The ledger** hears every attempt, every breaker transition, versions, subscriptions and
  pauses (the pauses file is watched here).

The gateway's own calls are bounded (``background_concurrency`` at once, ``background_queue``
pending, bodies read up to a small limit) and never logged with their bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.clock import Clock
from gateway.errors import (
    GatewayError,
    PracticeNotSubscribed,
    PracticePaused,
    UpstreamTimeout,
)
from gateway.exact_api import API_MINIMUM_VERSION, practice_route_minimum
from gateway.http1 import Http1Error, UpstreamResponse
from gateway.ledger import Answer, Ledger, classify
from gateway.outcome import OutcomeKind
from gateway.pauses import PauseBook, PauseEntry, ReloadResult, log_events, watch_file
from gateway.policies import PracticesPolicy
from gateway.practices.subscriptions import (
    LIST_MAX_BYTES,
    SubscriptionBook,
    Verdict,
    parse_subscriptions,
)
from gateway.practices.versions import (
    DETAILS_MAX_BYTES,
    DETAILS_TEMPLATE,
    VersionBook,
    version_from_details,
)
from gateway.resilience import Resilience, Ticket
from gateway.resilience.breaker import State
from gateway.routes import Target
from gateway.tokens import TokenSource
from gateway.upstream import Upstream, request_headers

log = logging.getLogger("exact_gateway.practices")
SUBSCRIPTIONS_PATH = "/v1/Subscriptions/active"
# Subscription changes logged one line per practice up to this many per refresh, then a count.
CHANGES_LOGGED = 50


# The status page lists at most this many practices in trouble (counts cover the rest).
TROUBLED_SHOWN = 50
_TROUBLED = frozenset({"unavailable", "slow", "paused"})
_FAILED = ("503", "504", "timeout")
_ANSWERED = ("2xx", "4xx", "502", "other")


def _hour_mark(bucket: dict[str, object]) -> str:
    """One cell of a practice's 24-hour strip: ``none`` (no attempt), ``ok`` (answers only),
    ``down`` (failures only) or ``mixed``."""
    failed = sum(int(str(bucket.get(key, 0))) for key in _FAILED)
    answered = sum(int(str(bucket.get(key, 0))) for key in _ANSWERED)
    if not failed:
        return "ok" if answered else "none"
    return "mixed" if answered else "down"


def details_path(practice_id: str) -> str:
    return f"/v1/Practices/{practice_id}/details"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one of the gateway's own calls came back with (a status or an error)."""

    status: int | None
    body: bytes | None
    retry_after: str | None
    error: GatewayError | None
    duration: float


class DetailsTap:
    """Keeps a GetPracticeDetails answer streaming to a caller, up to a bound, to read its
    ``pmsVersion`` afterwards."""

    __slots__ = ("_body", "_practice_id", "_watch")

    def __init__(self, watch: PracticeWatch, practice_id: str) -> None:
        self._watch = watch
        self._practice_id = practice_id
        self._body: bytearray | None = bytearray()

    def feed(self, chunk: bytes) -> None:
        if self._body is not None:
            self._body += chunk
            if len(self._body) > DETAILS_MAX_BYTES:
                self._body = None

    def finish(self) -> None:
        if self._body is not None:
            self._watch.learn_version(self._practice_id, version_from_details(bytes(self._body)))


class PracticeWatch:
    """Admission, learning and the background calls; one per gateway."""

    def __init__(
        self,
        policy: PracticesPolicy,
        *,
        upstream: Upstream,
        tokens: TokenSource,
        resilience: Resilience,
        clock: Clock,
    ) -> None:
        self.policy = policy
        self._upstream = upstream
        self._tokens = tokens
        self._resilience = resilience
        self._clock = clock
        self.ledger = Ledger(policy.ledger, clock.wall)
        self.versions = VersionBook(policy.versions, clock.monotonic)
        self.subscriptions = SubscriptionBook(policy.subscriptions, clock.monotonic)
        self.pauses = PauseBook()
        scopes = set(policy.scopes)
        self.subscriptions_on = "productsubscription.get" in scopes
        self.lookups_on = policy.version_admission and "practice.get" in scopes
        self.probes_on = policy.synthetic_probes and "practice.get" in scopes
        self._slots = asyncio.Semaphore(policy.background_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._refreshing: asyncio.Future[None] | None = None
        resilience.watch_practices(self._breaker_changed)
        if self.probes_on:
            resilience.probe_with(self._launch_probe)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background loops (the caller cancels them with :meth:`stop`)."""
        if self.subscriptions_on:
            self._spawn(self._poll_subscriptions(), name="subscriptions", bounded=False)
        else:
            log.info(
                "subscription awareness is off: the token is not requested with the"
                " productsubscription.get scope",
                extra={"fields": {"event": "subscriptions_off"}},
            )
        if self.probes_on:
            self._spawn(self._scan_breakers(), name="probe-scan", bounded=False)
        path = self.policy.pauses_file
        if path is not None:
            watcher = watch_file(
                path,
                self.pauses,
                wall=self._clock.wall,
                sleep=self._clock.sleep,
                interval=self.policy.pauses_poll,
                on_change=self._pauses_changed,
            )
            self._spawn(watcher, name="pauses", bounded=False)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, work: Awaitable[None], *, name: str, bounded: bool = True) -> bool:
        if bounded and len(self._tasks) >= self.policy.background_queue:
            if asyncio.iscoroutine(work):
                work.close()
            return False
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    # -- admission ----------------------------------------------------------------------------

    async def admit(self, method: str, target: Target, deadline: float) -> None:
        """Raise the local answer for a request this practice cannot be sent, else return."""
        practice_id = target.practice_id
        if practice_id is None:
            return
        pause = self.pauses.paused(practice_id, self._clock.wall())
        if pause is not None:
            until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pause.until))
            raise PracticePaused(
                f"practice {practice_id} is paused by an operator until {until}",
                practice_id=practice_id,
                retry_after=pause.seconds_left,
            )
        if self.subscriptions_on:
            await self._check_subscribed(practice_id, deadline)
        if not self.policy.version_admission:
            return
        minimum = practice_route_minimum(method, target.route)
        refusal = self.versions.check(minimum, practice_id)
        if refusal is not None:
            raise refusal
        if (
            self.lookups_on
            and minimum is not None
            and minimum > API_MINIMUM_VERSION
            and self.versions.wants_lookup(practice_id)
            and not self._spawn(self._lookup(practice_id), name="version-lookup")
        ):
            self.versions.lookup_done(practice_id, None)

    async def _check_subscribed(self, practice_id: str, deadline: float) -> None:
        if self.subscriptions.verdict(practice_id) is not Verdict.NOT_LISTED:
            return
        if self.subscriptions.may_recheck():
            # One re-check: a practice that subscribed since the last poll is served at once.
            remaining = deadline - self._clock.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.refresh_subscriptions()), remaining)
        if self.subscriptions.verdict(practice_id) is Verdict.NOT_LISTED:
            raise PracticeNotSubscribed(
                f"practice {practice_id} is not on the list of active subscriptions",
                practice_id=practice_id,
            )

    # -- learning -----------------------------------------------------------------------------

    def tap(
        self, method: str, route: str, practice_id: str | None, status: int
    ) -> DetailsTap | None:
        """A tap for an answer streaming to a caller, when it is a GetPracticeDetails 200."""
        if practice_id is None or status != 200 or method != "GET" or route != DETAILS_TEMPLATE:
            return None
        if self.versions.learnt_recently(practice_id):
            return None  # known and fresh: no need to parse this answer
        return DetailsTap(self, practice_id)

    def learn_version(self, practice_id: str, text: str | None) -> None:
        if text is not None and self.versions.learn(practice_id, text) is not None:
            self.ledger.set_version(practice_id, text)

    def observed(
        self,
        practice_id: str | None,
        status: int | None,
        error: GatewayError | None,
        duration: float,
    ) -> None:
        """One attempt's outcome at a practice, for the ledger."""
        if practice_id is None:
            return
        if status is not None:
            self.ledger.record_attempt(practice_id, classify(status), duration)
        elif isinstance(error, UpstreamTimeout) and not error.connecting:
            self.ledger.record_attempt(practice_id, Answer.TIMEOUT)
        else:
            self.ledger.record_attempt(practice_id, Answer.UNREACHABLE)

    def _breaker_changed(self, practice_id: str, state: str) -> None:
        if state == State.OPEN.value:
            self.ledger.breaker_opened(practice_id)
        elif state == State.CLOSED.value:
            self.ledger.breaker_closed(practice_id)

    def _pauses_changed(self, result: ReloadResult) -> None:
        for pause in result.started:
            self.ledger.pause_started(pause.practice_id, pause.until, pause.note)
        for practice_id in result.ended:
            self.ledger.pause_ended(practice_id)

    def apply_fleet_pauses(self, entries: dict[str, PauseEntry]) -> None:
        """The fleet's pauses as last read from Redis (merged with the file's by the book)."""
        result = self.pauses.set_fleet(entries, self._clock.wall())
        log_events("redis", result)
        if result.started or result.ended:
            self._pauses_changed(result)

    def paused_now(self) -> list[dict[str, object]]:
        """The pauses in force, for ``/breakers`` and the status page."""
        wall = self._clock.wall()
        return [
            {
                "practice_id": pause.practice_id,
                "until_unix": pause.until,
                "seconds_left": round(pause.seconds_left, 3),
                "note": pause.note,
            }
            for pause in self.pauses.active(wall)
        ]

    def troubled(self, shown: int = TROUBLED_SHOWN) -> dict[str, object]:
        """For the status page: practices unavailable, slow or paused (the longest-standing
        last), each with a strip of its last 24 hours, and the ledger's counts by state."""
        snapshot = self.ledger.snapshot()
        rows = [view for view in snapshot["practices"] if view["state"] in _TROUBLED]
        rows.sort(key=lambda view: str(view["since"]), reverse=True)
        out = []
        for view in rows[:shown]:
            full = self.ledger.get(view["practice_id"]) or {}
            periods = view["unavailable_periods"]
            out.append(
                {
                    "practice_id": view["practice_id"],
                    "state": view["state"],
                    "since": view["since"],
                    "cause": periods[-1]["cause"] if periods else view["last_failure_kind"],
                    "pms_version": view["pms_version"],
                    "latency_seconds": view["latency_seconds"],
                    "pause": view["pause"],
                    "hours": [_hour_mark(bucket) for bucket in full.get("hourly", [])],
                }
            )
        return {
            "rows": out,
            "not_shown": max(0, len(rows) - shown),
            "states": snapshot["states"],
            "paused": self.paused_now(),
        }

    # -- the gateway's own calls ----------------------------------------------------------------

    async def _call(self, path: str, max_bytes: int) -> Outcome:
        """One GET of our own to EXACT; its body read up to ``max_bytes`` (else None)."""
        limit = self.policy.attempt_timeout
        token = await self._tokens.get(wait=limit)
        headers = request_headers(CIMultiDictProxy(CIMultiDict()), token, "exact-gateway-own")
        headers.append(("Accept", "application/json"))
        started = self._clock.monotonic()
        sent = await self._upstream.send("GET", path, headers, None, limit)
        duration = self._clock.monotonic() - started
        if sent.kind is not OutcomeKind.RESPONSE:
            return Outcome(None, None, None, sent.error(), duration)
        response: UpstreamResponse = sent.response
        try:
            async with asyncio.timeout(limit):
                body = await _read_bounded(response, max_bytes)
        except (Http1Error, TimeoutError):
            body = None
        finally:
            response.close()
        return Outcome(sent.status, body, sent.retry_after, None, duration)

    async def _lookup(self, practice_id: str) -> None:
        text = None
        try:
            async with self._slots:
                outcome = await self._call(details_path(practice_id), DETAILS_MAX_BYTES)
            self.observed(practice_id, outcome.status, outcome.error, outcome.duration)
            if outcome.status == 200 and outcome.body is not None:
                text = version_from_details(outcome.body)
        except GatewayError:
            pass  # no token: the version stays unknown, requests pass
        finally:
            self.versions.lookup_done(practice_id, text)
            if text is not None:
                self.ledger.set_version(practice_id, text)

    def _launch_probe(self, ticket: Ticket) -> None:
        if not self._spawn(self._probe(ticket), name="probe"):
            self._resilience.abandon(ticket)

    async def _probe(self, ticket: Ticket) -> None:
        """The half-open probe of a practice breaker: our own GET of its details."""
        breaker = ticket.practice
        assert breaker is not None  # noqa: S101 - probes are only handed out for practices
        try:
            async with self._slots:
                if self._resilience.upstream.state is State.OPEN:
                    self._resilience.abandon(ticket)  # the EXACT host is down: try later
                    return
                outcome = await self._call(details_path(breaker.key), DETAILS_MAX_BYTES)
        except GatewayError:
            self._resilience.abandon(ticket)  # no token: nothing learnt about the practice
            return
        except BaseException:
            self._resilience.abandon(ticket)
            raise
        self.observed(breaker.key, outcome.status, outcome.error, outcome.duration)
        self._resilience.observe(ticket, outcome.status, outcome.error, outcome.retry_after)
        if outcome.status == 200 and outcome.body is not None:
            self.learn_version(breaker.key, version_from_details(outcome.body))
        log.info(
            "practice probed",
            extra={
                "fields": {
                    "event": "synthetic_probe",
                    "practice_id": breaker.key,
                    "status": outcome.status,
                    "error": outcome.error.reason if outcome.error is not None else None,
                }
            },
        )

    async def _scan_breakers(self) -> None:
        """Probe breakers whose open time is over even when no caller asks for them, so a
        practice's recovery is noticed (and its outage ended in the ledger) without traffic."""
        while True:
            await self._clock.sleep(self.policy.probe_scan_interval)
            now = self._clock.monotonic()
            for breaker in list(self._resilience.breakers.not_closed()):
                if breaker.probe_in_flight or (
                    breaker.state is State.OPEN and now < breaker.open_until
                ):
                    continue
                if self._resilience.upstream.state is State.OPEN:
                    break
                admission = breaker.admit(now)
                if admission.allowed and admission.probe:
                    self._launch_probe(Ticket(breaker, True, False))

    # -- subscriptions --------------------------------------------------------------------------

    async def refresh_subscriptions(self) -> None:
        """Fetch the list now, or wait for the fetch already under way (single flight)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._fetch_subscriptions())
        await asyncio.shield(self._refreshing)

    async def _poll_subscriptions(self) -> None:
        while True:
            await self.refresh_subscriptions()
            await self._clock.sleep(self.policy.subscriptions.refresh_interval)

    async def _fetch_subscriptions(self) -> None:
        try:
            outcome = await self._call(SUBSCRIPTIONS_PATH, LIST_MAX_BYTES)
        except GatewayError as error:
            outcome = Outcome(None, None, None, error, 0.0)
        ids = parse_subscriptions(outcome.body) if outcome.body is not None else None
        if outcome.status != 200 or ids is None:
            log.warning(
                "the list of active subscriptions could not be refreshed; the last one is kept",
                extra={
                    "fields": {
                        "event": "subscriptions_refresh_failed",
                        "status": outcome.status,
                        "error": outcome.error.reason if outcome.error is not None else None,
                    }
                },
            )
            return
        first = self.subscriptions.fetched_at is None
        changes = self.subscriptions.replace(ids)
        self.ledger.set_subscriptions(ids)
        for practice_id in changes.removed:
            self._resilience.forget(practice_id)
            self.versions.forget(practice_id)
        if first:
            log.info(
                "active subscriptions loaded",
                extra={"fields": {"event": "subscriptions_loaded", "practices": len(ids)}},
            )
        for event, practice_ids in (
            ("subscription_added", changes.added),
            ("subscription_removed", changes.removed),
        ):
            for practice_id in practice_ids[:CHANGES_LOGGED]:
                log.info(event, extra={"fields": {"event": event, "practice_id": practice_id}})
            if len(practice_ids) > CHANGES_LOGGED:
                log.info(
                    event,
                    extra={
                        "fields": {
                            "event": event,
                            "not_logged": len(practice_ids) - CHANGES_LOGGED,
                        }
                    },
                )


async def _read_bounded(response: UpstreamResponse, max_bytes: int) -> bytes | None:
    """The whole body, or None once it is longer than ``max_bytes`` (read no further)."""
    body = bytearray()
    async for chunk in response:
        body += chunk
        if len(body) > max_bytes:
            return None
    return bytes(body)
