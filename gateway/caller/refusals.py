"""Refusals in the contract's format: problem+json with ``X-Request-ID``, never aiohttp's text.

aiohttp answers a malformed head, an oversized line or a bad chunk with ``text/plain`` that
quotes the caller's bytes, carries a version banner and logs at error level: a scanner could
raise error alerts at will. Here every refusal the caller edge makes, before or after the
head is complete, is the contract's problem+json, quoting nothing the caller sent; the
parser's exceptions are translated to the gateway's error tree in :func:`parse_error`.
"""

from __future__ import annotations

import asyncio
import uuid
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from multidict import CIMultiDict

from gateway.caller.limits import MAX_FIELD_BYTES, MAX_HEADERS
from gateway.caller.messages import Answer
from gateway.errors import BadRequest, GatewayError, RequestHeaderFieldsTooLarge, UriTooLong


def new_request_id() -> str:
    """A request id for a refusal made before the handler (and its id) existed."""
    return uuid.uuid4().hex


class ProblemResponse(web.Response):
    """A refusal made by the admin port's connection itself, with no ``Server`` banner.

    aiohttp adds its version banner while preparing the head, after which only an
    application's ``on_response_prepare`` can take it out; a refusal made before the
    application saw the request (a malformed or oversized head) gets no such hook, so it
    drops the banner itself, at the same point.
    """

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        if self.headers.get("Server") == SERVER_SOFTWARE:
            del self.headers["Server"]


def render_problem(error: GatewayError, request_id: str) -> web.Response:
    """The contract's problem+json answer for a gateway error."""
    return ProblemResponse(
        status=error.status,
        body=error.problem_body(request_id),
        content_type="application/problem+json",
        headers=error.headers(request_id),
    )


def problem_answer(error: GatewayError, request_id: str) -> Answer:
    """The same answer for the proxy port's connection to write (content type as a plain
    header: nothing parses it on the way out)."""
    headers = CIMultiDict(error.headers(request_id))
    headers["Content-Type"] = "application/problem+json"
    return Answer(error.status, error.problem_body(request_id), headers)


def raw_problem(error: GatewayError, request_id: str) -> bytes:
    """The same answer as bytes, for when no request object exists (head never completed)."""
    body = error.problem_body(request_id)
    headers = {
        "Content-Type": "application/problem+json",
        "Content-Length": str(len(body)),
        "Date": formatdate(usegmt=True),
        "Connection": "close",
    } | error.headers(request_id)
    head = f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return head.encode("ascii") + b"\r\n" + body


def refuse_head(transport: asyncio.Transport, error: GatewayError, request_id: str) -> bool:
    """Answer a request whose head never completed. True when the connection should now
    read and drop what still arrives for a moment before closing (it half-closed): closing
    outright with unread bytes makes the kernel send a reset, and the caller may never read
    why. False when it cannot half-close and must close now."""
    transport.write(raw_problem(error, request_id))
    if transport.can_write_eof():
        transport.write_eof()
        return True
    return False  # pragma: no cover - TCP transports can always write EOF


def parse_error(exc: HttpProcessingError, target_too_long: bool, max_target: int) -> GatewayError:
    """The gateway error for one of aiohttp's parser refusals.

    Never quotes the caller's bytes back (aiohttp's messages do): they may be anything.
    ``target_too_long`` says whether the request line (rather than a header field) was the
    line over its limit, which aiohttp's ``LineTooLong`` does not tell apart.
    """
    if isinstance(exc, LineTooLong):
        if target_too_long:
            return UriTooLong(f"the request target is longer than {max_target} bytes")
        return RequestHeaderFieldsTooLarge(f"a header field is longer than {MAX_FIELD_BYTES} bytes")
    if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
        return RequestHeaderFieldsTooLarge(f"more than {MAX_HEADERS} header fields")
    return BadRequest(f"the request is not valid HTTP/1.1 ({type(exc).__name__})")
