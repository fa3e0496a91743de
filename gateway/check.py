"""``exact-gateway check``: prove the configuration works, end to end, and say why if not.

It validates the settings, obtains a token exactly as the gateway would, and calls
ListActiveSubscriptions. The report is for a person at a terminal; the exit code is for
scripts: 0 everything works, 2 a configuration problem (bad setting, credentials or scopes
refused), 1 something could not be reached.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.app import open_clients
from gateway.errors import ConfigError, CredentialsRejected, TokenEndpointError
from gateway.outcome import OutcomeKind
from gateway.sandbox_mode import sandbox_for
from gateway.settings import Settings
from gateway.upstream import Reply, Upstream, request_headers

OK, CONFIG_PROBLEM, UNREACHABLE = 0, 2, 1
SUBSCRIPTIONS = "/v1/Subscriptions/active"


@dataclass
class Report:
    write: Callable[[str], None]
    code: int = OK

    def ok(self, what: str, detail: str) -> None:
        self.write(f"  [ok]   {what}: {detail}")

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
        await _check_subscriptions(clients.upstream, token.value, report)
    report.write("result: everything works" if report.code == OK else "result: NOT working")
    return report.code


async def _check_subscriptions(upstream: Upstream, token: str, report: Report) -> None:
    headers = request_headers(CIMultiDictProxy(CIMultiDict()), token, "exact-gateway-check")
    headers.append(("Accept", "application/json"))
    outcome = await upstream.send("GET", SUBSCRIPTIONS, headers, None)
    if outcome.kind is not OutcomeKind.RESPONSE:
        report.fail("ListActiveSubscriptions", outcome.error().detail, UNREACHABLE)
        return
    reply = Reply(outcome.response)
    try:
        text = b"".join([chunk async for chunk in Upstream.body(reply)]).decode("utf-8", "replace")
    finally:
        outcome.response.close()
    if reply.broken is not None:
        report.fail("ListActiveSubscriptions", "the answer broke off", UNREACHABLE)
        return
    response = outcome.response
    if response.status == 200:
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
            return
        report.fail("ListActiveSubscriptions", "answered 200 with an unexpected body", UNREACHABLE)
    elif response.status in {401, 403}:
        report.fail(
            "ListActiveSubscriptions",
            f"refused with HTTP {response.status}: the token may lack the"
            " productsubscription.get scope",
            CONFIG_PROBLEM,
        )
    else:
        report.fail("ListActiveSubscriptions", f"answered HTTP {response.status}", UNREACHABLE)
