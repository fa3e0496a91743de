"""The caller edge: an HTTP/1.1 listener that no slow, huge or hostile caller can stall or starve.

aiohttp's server defaults suit friendly clients: no limit on how long a request head may take,
keep-alive for an hour, request bodies decompressed, refusals in plain text at error level.
This package is the listener the gateway serves both ports with, in rooms:

- :mod:`~gateway.caller.limits`: the bounds (settings) and the fixed limits, with reasons;
- :mod:`~gateway.caller.server`: :class:`Listener`, the connection cap and shutdown manners;
- :mod:`~gateway.caller.connection`: one connection's phases, each with its time limit;
- :mod:`~gateway.caller.refusals`: refusals as the contract's problem+json;
- :mod:`~gateway.caller.request`: what a handler may ask of its connection;
- :mod:`~gateway.caller.writer`: response heads written as the bytes EXACT sent.

It may import :mod:`gateway.errors` and aiohttp, nothing else of ours.
"""

from gateway.caller.limits import CallerLimits, connection_cap
from gateway.caller.refusals import render_problem
from gateway.caller.request import cut_off, expect_continue, on_response_prepare
from gateway.caller.server import Listener

__all__ = [
    "CallerLimits",
    "Listener",
    "connection_cap",
    "cut_off",
    "expect_continue",
    "on_response_prepare",
    "render_problem",
]
