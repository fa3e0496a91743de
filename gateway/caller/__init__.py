"""The caller edge: an HTTP/1.1 listener that no slow, huge or hostile caller can stall or starve.

aiohttp's server defaults suit friendly clients: no limit on how long a request head may take,
keep-alive for an hour, request bodies decompressed, refusals in plain text at error level.
This package holds the listeners the gateway serves its ports with, in rooms:

- :mod:`~gateway.caller.limits`: the bounds (settings) and the fixed limits, with reasons;
- :mod:`~gateway.caller.door`: what a port's connections share: the cap, the drain flag,
  how refusals are told;
- :mod:`~gateway.caller.refusals`: refusals as the contract's problem+json.

The proxy port, where every microsecond is the partner's bill, has its own lean HTTP/1.1
server on httptools:

- :mod:`~gateway.caller.listener`: :class:`ProxyListener`, the server and its drain;
- :mod:`~gateway.caller.http11`: one connection's parsing and phases, each time-limited;
- :mod:`~gateway.caller.messages`: the request, its streamed body, and the answers.

The admin port serves an aiohttp application (routes, the status page) behind the same
bounds:

- :mod:`~gateway.caller.server`: :class:`Listener`, aiohttp's low-level server with the cap;
- :mod:`~gateway.caller.connection`: aiohttp's protocol with the phase time limits;
- :mod:`~gateway.caller.request`: the application's signal that gives the connection the last
  word on each response's headers.

It may import :mod:`gateway.errors`, aiohttp and httptools, nothing else of ours.
"""

from gateway.caller.framing import NO_BODY_STATUSES
from gateway.caller.limits import CallerLimits, connection_cap
from gateway.caller.listener import ProxyListener
from gateway.caller.messages import Answer, AnswerStream, IncomingRequest, RequestBody
from gateway.caller.refusals import problem_answer, render_problem
from gateway.caller.request import on_response_prepare
from gateway.caller.server import Listener

__all__ = [
    "NO_BODY_STATUSES",
    "Answer",
    "AnswerStream",
    "CallerLimits",
    "IncomingRequest",
    "Listener",
    "ProxyListener",
    "RequestBody",
    "connection_cap",
    "on_response_prepare",
    "problem_answer",
    "render_problem",
]
