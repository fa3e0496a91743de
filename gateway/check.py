"""``exact-gateway check``: prove the configuration works, end to end, and say why if not.

It validates the settings, obtains a token exactly as the gateway would, calls
ListActiveSubscriptions and, with ``practice.get``, asks each subscribed practice for its
details (at most ``PRACTICES_PROBED``, ``PRACTICES_AT_ONCE`` at a time) to report its EXACT
version and whether it is reachable: one line each for the first ``PRACTICES_LISTED``, then
a summary. An unreachable practice is reported, not counted as a failure of the gateway.
The report is for a person at a terminal; the exit code is for scripts: 0 everything works,
2 a configuration problem (bad setting, credentials or scopes refused), 1 something could
not be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.app import open_clients
from gateway.errors import (
    ConfigError,
    CredentialsRejected,
    GatewayError,
    TokenEndpointError,
    UpstreamUnreachable,
)
from gateway.http1 import Http1Error, UpstreamResponse
from gateway.outcome import OutcomeKind
from gateway.practices.versions import DETAILS_MAX_BYTES, version_from_details
from gateway.sandbox_mode import sandbox_for
from gateway.settings import Settings
from gateway.upstream import Headers, Upstream, request_headers

OK, CONFIG_PROBLEM, UNREACHABLE = 0, 2, 1
SUBSCRIPTIONS = "/v1/Subscriptions/active"
# A subscriptions list far larger than any partner has (the practice watch allows 4 MiB too).
SUBSCRIPTIONS_MAX_BYTES = 4 * 1024 * 1024
PRACTICES_PROBED = 200
PRACTICES_AT_ONCE = 8
PRACTICES_LISTED = 20


@dataclass
class Report:
    write: Callable[[str], None]
    code: int = OK

    def ok(self, what: str, detail: str) -> None:
        self.write(f"  [ok]   {what}: {detail}")

    def warn(self, what: str, detail: str) -> None:
        self.write(f"  [warn] {what}: {detail}")

    def fail(self, what: str, detail: str, code: int) -> None:
        self.write(f"  [FAIL] {what}: {detail}")
        self.code = max(self.code, code)


async def run_check(settings: Settings, write: Callable[[str], None]) -> int:
    write(f"exact-gateway check ({settings.environment.value})")
    if settings.uses_inprocess_sandbox:
        write("  using the built-in sandbox: simulated data, demo credentials")
    async with sandbox_for(settings) as effective:
        return await _check(effective, Report(write))


async def _check(settings: Settings, report: Report) -> int:
    api_url = settings.resolved_api_url()
    authority = settings.resolved_authority_url()
    report.ok("configuration", f"API {api_url}, identity server {authority}")
    async with contextlib.AsyncExitStack() as stack:
        # The same clients the gateway itself opens (one factory for serve and check).
        clients = await open_clients(settings, settings.policies(), stack)
        identity_client = clients.token_client
        try:
            token = await identity_client.request_token()
        except CredentialsRejected as exc:
            report.fail(
                "token",
                f"{exc}. Check CLIENT_ID, the secret and SCOPES for this environment",
                CONFIG_PROBLEM,
            )
            return report.code
        except ConfigError as exc:
            report.fail("token", str(exc), CONFIG_PROBLEM)
            return report.code
        except TokenEndpointError as exc:
            report.fail("identity server", str(exc), UNREACHABLE)
            return report.code
        report.ok("identity server", f"token endpoint {identity_client.token_endpoint}")
        report.ok(
            "token",
            f"obtained for client {settings.client_id}, valid for {int(token.lifetime)} s,"
            f" scopes: {' '.join(settings.scopes)}",
        )
        practices = await _check_subscriptions(clients.upstream, token.value, report)
        if practices and "practice.get" in settings.scopes:
            await _check_practices(clients.upstream, token.value, practices, report)
    report.write("result: everything works" if report.code == OK else "result: NOT working")
    return report.code


def _headers(token: str) -> Headers:
    headers = request_headers(CIMultiDictProxy(CIMultiDict()), token, "exact-gateway-check")
    headers.append(("Accept", "application/json"))
    return headers


async def _get(upstream: Upstream, path: str, token: str, max_bytes: int) -> tuple[int, bytes]:
    """One GET of ours: (status, body up to ``max_bytes``), or a GatewayError for a failure."""
    outcome = await upstream.send("GET", path, _headers(token), None)
    if outcome.kind is not OutcomeKind.RESPONSE:
        raise outcome.error()
    response: UpstreamResponse = outcome.response
    body = bytearray()
    try:
        async for chunk in response:
            body += chunk
            if len(body) > max_bytes:
                break
    except Http1Error as exc:
        raise UpstreamUnreachable(f"the answer broke off ({exc.kind})") from None
    finally:
        response.close()
    return outcome.status, bytes(body)


async def _check_practices(
    upstream: Upstream, token: str, practices: list[str], report: Report
) -> None:
    """Version and reachability of each subscribed practice (bounded, summarised)."""
    slots = asyncio.Semaphore(PRACTICES_AT_ONCE)

    async def probe(practice_id: str) -> tuple[str, str | None, str | None]:
        async with slots:
            try:
                status, body = await _get(
                    upstream, f"/v1/Practices/{practice_id}/details", token, DETAILS_MAX_BYTES
                )
            except GatewayError as exc:
                return practice_id, None, exc.reason
            if status != 200:
                return practice_id, None, f"HTTP {status}"
            return practice_id, version_from_details(body) or "unknown", None

    probed = practices[:PRACTICES_PROBED]
    results = await asyncio.gather(*(probe(p) for p in probed))
    for practice_id, version, problem in results[:PRACTICES_LISTED]:
        if problem is None:
            report.ok(f"practice {practice_id}", f"reachable, EXACT {version}")
        else:
            report.warn(f"practice {practice_id}", f"not reachable now ({problem})")
    if len(practices) > PRACTICES_LISTED:
        reachable = sum(1 for _, _, problem in results if problem is None)
        report.write(
            f"  practices: {reachable} of {len(probed)} asked are reachable"
            + (
                f"; {len(practices) - len(probed)} more not asked"
                if len(practices) > len(probed)
                else ""
            )
        )


async def _check_subscriptions(upstream: Upstream, token: str, report: Report) -> list[str]:
    try:
        status, raw = await _get(upstream, SUBSCRIPTIONS, token, SUBSCRIPTIONS_MAX_BYTES)
    except GatewayError as exc:
        report.fail("ListActiveSubscriptions", exc.detail, UNREACHABLE)
        return []
    text = raw.decode("utf-8", "replace")
    if status == 200:
        try:
            practices = json.loads(text)
        except ValueError:
            practices = None
        if isinstance(practices, list):
            shown = ", ".join(str(p) for p in practices[:10])
            more = f" and {len(practices) - 10} more" if len(practices) > 10 else ""
            report.ok(
                "ListActiveSubscriptions",
                f"{len(practices)} practice(s) subscribed: {shown}{more}",
            )
            return [str(p) for p in practices]
        report.fail("ListActiveSubscriptions", "answered 200 with an unexpected body", UNREACHABLE)
    elif status in {401, 403}:
        report.fail(
            "ListActiveSubscriptions",
            f"refused with HTTP {status}: the token may lack the productsubscription.get scope",
            CONFIG_PROBLEM,
        )
    else:
        report.fail("ListActiveSubscriptions", f"answered HTTP {status}", UNREACHABLE)
    return []
