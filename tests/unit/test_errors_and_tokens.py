"""Pure parts: problem documents, Retry-After rounding, token usability margins."""

from __future__ import annotations

import base64
import json

import pytest

from gateway.credentials import basic_credentials
from gateway.errors import (
    BadRequest,
    CircuitOpen,
    GatewayError,
    PracticeVersionTooOld,
    TokenUnavailable,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.tokens import AccessToken, safety_margin


def test_problem_document_shape() -> None:
    """RFC 9457 fields plus reason, practice_id, retry_after and request_id."""
    error = TokenUnavailable("no token", practice_id="UKTEST1", retry_after=2.1)
    problem = error.problem("req-1")
    assert problem == {
        "type": "urn:exact-gateway:error:token_unavailable",
        "title": "No access token available",
        "status": 503,
        "detail": "no token",
        "reason": "token_unavailable",
        "request_id": "req-1",
        "practice_id": "UKTEST1",
        "retry_after": 3,
    }


def test_optional_problem_fields_are_omitted() -> None:
    """No practice, no retry hint: those keys are absent, not null."""
    problem = BadRequest("nope").problem("r")
    assert "practice_id" not in problem
    assert "retry_after" not in problem


@pytest.mark.parametrize(("seconds", "header"), [(0.2, "1"), (1.0, "1"), (29.01, "30"), (0, "0")])
def test_retry_after_is_whole_seconds_rounded_up(seconds: float, header: str) -> None:
    """Retry-After never tells a caller to come back before the gateway is ready."""
    assert TokenUnavailable("x", retry_after=seconds).retry_after_header == header


def test_statuses_and_reasons_follow_the_contract() -> None:
    """Each error class carries the contract's status and reason."""
    assert (BadRequest.status, BadRequest.reason) == (400, "bad_request")
    assert (TokenUnavailable.status, TokenUnavailable.reason) == (503, "token_unavailable")
    assert (UpstreamUnreachable.status, UpstreamUnreachable.reason) == (
        502,
        "upstream_unreachable",
    )
    assert (UpstreamTimeout.status, UpstreamTimeout.reason) == (504, "upstream_timeout")


@pytest.mark.parametrize(
    ("lifetime", "margin"), [(3600, 30), (300, 30), (299, 29.9), (60, 6), (5, 0.5)]
)
def test_safety_margin(lifetime: float, margin: float) -> None:
    """30 s before expiry, or the last tenth for tokens living under 300 s."""
    assert safety_margin(lifetime) == pytest.approx(margin)


def test_token_usable_until_margin() -> None:
    """A 60 s token obtained at t=100 is usable until t=154 and not after."""
    token = AccessToken(
        value="t", generation=1, obtained_at=100.0, lifetime=60.0, expires_at_unix=0.0
    )
    assert token.usable(153.9)
    assert not token.usable(154.0)


def test_token_value_hidden_from_repr() -> None:
    """repr() of a token never shows its value."""
    token = AccessToken(
        value="eyJsecret", generation=1, obtained_at=0.0, lifetime=60.0, expires_at_unix=0.0
    )
    assert "eyJsecret" not in repr(token)


def test_basic_credentials_as_exact_documents() -> None:
    """Basic base64(client_id:client_secret), as the vendor's own example builds it."""
    header = basic_credentials("client", "se:cret")
    assert header == "Basic " + base64.b64encode(b"client:se:cret").decode()


def _all_gateway_errors() -> list[type[GatewayError]]:
    found: list[type[GatewayError]] = [GatewayError]
    for cls in found:
        found += cls.__subclasses__()
    return found


def _build(
    error_class: type[GatewayError], text: str, practice_id: str | None, retry_after: float | None
) -> GatewayError:
    if error_class is PracticeVersionTooOld:
        return PracticeVersionTooOld(
            text, practice_id=practice_id or "UK1", version=text, minimum="13.856"
        )
    return error_class(text, practice_id=practice_id, retry_after=retry_after)


_HOSTILE_TEXT = [
    "plain",
    'quote " back\\slash',
    "line\nbreak\r\t\x00\x1f",
    "é ü 日本",
    "\udce9 lone",
]


@pytest.mark.parametrize("text", _HOSTILE_TEXT)
@pytest.mark.parametrize("error_class", _all_gateway_errors())
def test_problem_body_is_json_dumps_of_the_problem(
    error_class: type[GatewayError], text: str
) -> None:
    """The cheap encoder writes exactly what json.dumps of the document would, for every
    error class and for details and ids holding quotes, controls, non-ASCII and surrogates."""
    for practice_id, retry_after in ((None, None), (text, 0.2), ("UKTEST1", 0.0)):
        error = _build(error_class, text, practice_id, retry_after)
        for request_id in ("0123abcd", text):
            body = error.problem_body(request_id)
            assert body == json.dumps(error.problem(request_id)).encode()
            assert json.loads(body) == error.problem(request_id)


@pytest.mark.parametrize("practice_id", ["UKTEST1", "uktest1", *_HOSTILE_TEXT])
@pytest.mark.parametrize("retry_after", [0.0, 0.5, 1.5, 2.5, 12.3456, -0.4, 1e9, 30.000001])
def test_circuit_open_fast_constructor_matches_the_generic_one(
    practice_id: str, retry_after: float
) -> None:
    """CircuitOpen.for_practice (skipping __init__'s keyword path) makes the same error as the
    generic constructor: same attributes, args, message, headers and answer bytes."""
    fast = CircuitOpen.for_practice(practice_id, retry_after)
    generic = CircuitOpen(
        f"practice {practice_id} is not answering; the next probe is in {retry_after:.0f} s",
        practice_id=practice_id,
        retry_after=retry_after,
    )
    assert type(fast) is CircuitOpen
    assert vars(fast) == vars(generic)
    assert fast.args == generic.args
    assert str(fast) == str(generic)
    assert fast.headers("r-1") == generic.headers("r-1")
    assert fast.problem_body("r-1") == generic.problem_body("r-1")
    assert fast.problem_body("r-1") == json.dumps(generic.problem("r-1")).encode()
