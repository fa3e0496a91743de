"""The sandbox's control endpoints under `/_sandbox`: inspect and steer the simulation.

This is a local test tool, so it has no authentication: whoever can reach the sandbox can
change it. Never expose a sandbox beyond the machine or test network it serves.

    GET  /_sandbox/practices                  every practice and its attempt count
    GET  /_sandbox/practices/{id}             one practice
    PUT  /_sandbox/practices/{id}             change (or create) a practice
    GET  /_sandbox/practices/{id}/requests    attempts, refusals and the bounded request log
    GET  /_sandbox/messages                   messages accepted by POST …/Contact
    GET  /_sandbox/identity                   identity mode, lifetime, token request counts
    PUT  /_sandbox/identity                   change mode, latency_s, token_lifetime_s, …
    POST /_sandbox/identity/revoke            revoke every token issued so far
    POST /_sandbox/reset                      back to defaults; counts, logs, edits cleared
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.sandbox.practices import Practice, upsert_practice
from gateway.sandbox.state import SANDBOX_STATE

PREFIX = "/_sandbox"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"invalid JSON: {exc}"}), content_type="application/json"
        ) from exc


def _practice(request: web.Request) -> Practice:
    state = request.app[SANDBOX_STATE]
    practice_id = request.match_info["practice_id"]
    practice = state.practices.get(practice_id.upper())
    if practice is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"no practice '{practice_id}'"}),
            content_type="application/json",
        )
    return practice


async def list_practices(request: web.Request) -> web.Response:
    """Every practice with its behaviour and attempt count."""
    state = request.app[SANDBOX_STATE]
    return web.json_response({"practices": [p.to_json() for p in state.practices.values()]})


async def get_practice(request: web.Request) -> web.Response:
    """One practice."""
    return web.json_response(_practice(request).to_json())


async def put_practice(request: web.Request) -> web.Response:
    """Change a practice, creating it when new (201) so tests can add any number of ids."""
    state = request.app[SANDBOX_STATE]
    body = await _body(request)
    try:
        practice, created = upsert_practice(
            state.practices, request.match_info["practice_id"], body, state.config
        )
    except ValueError as exc:
        return _error(400, str(exc))
    return web.json_response(practice.to_json(), status=201 if created else 200)


async def practice_requests(request: web.Request) -> web.Response:
    """What reached the practice (`attempts`), what the relay refused before it (`refused`),
    and the most recent requests of both kinds, each marked `relayed` or not."""
    practice = _practice(request)
    return web.json_response(
        {"attempts": practice.attempts, "refused": practice.refused, "requests": list(practice.log)}
    )


async def list_messages(request: web.Request) -> web.Response:
    """Messages accepted by POST …/Contact, per practice."""
    messages = request.app[SANDBOX_STATE].messages
    return web.json_response(
        {"total": sum(len(m) for m in messages.values()), "practices": messages}
    )


def _identity_view(request: web.Request) -> dict[str, Any]:
    state = request.app[SANDBOX_STATE]
    return state.identity.to_json(
        lifetime_s=state.token_lifetime_s, revoked_through=state.tokens.revoked_through
    )


async def get_identity(request: web.Request) -> web.Response:
    """Identity server mode, token lifetime and token request counts."""
    return web.json_response(_identity_view(request))


async def put_identity(request: web.Request) -> web.Response:
    """Change the identity server's mode, latency, token lifetime or failure status."""
    body = await _body(request)
    try:
        request.app[SANDBOX_STATE].identity.update(body)
    except ValueError as exc:
        return _error(400, str(exc))
    return web.json_response(_identity_view(request))


async def revoke_tokens(request: web.Request) -> web.Response:
    """Invalidate every token issued so far; later tokens are unaffected."""
    request.app[SANDBOX_STATE].tokens.revoke_all()
    return web.json_response(_identity_view(request))


async def reset(request: web.Request) -> web.Response:
    """Return the sandbox to its starting point."""
    request.app[SANDBOX_STATE].reset()
    return web.json_response({"reset": True})


def add_control_routes(app: web.Application) -> None:
    """Register the control endpoints on `app`."""
    router = app.router
    router.add_get(f"{PREFIX}/practices", list_practices)
    router.add_get(f"{PREFIX}/practices/{{practice_id}}", get_practice)
    router.add_put(f"{PREFIX}/practices/{{practice_id}}", put_practice)
    router.add_get(f"{PREFIX}/practices/{{practice_id}}/requests", practice_requests)
    router.add_get(f"{PREFIX}/messages", list_messages)
    router.add_get(f"{PREFIX}/identity", get_identity)
    router.add_put(f"{PREFIX}/identity", put_identity)
    router.add_post(f"{PREFIX}/identity/revoke", revoke_tokens)
    router.add_post(f"{PREFIX}/reset", reset)
