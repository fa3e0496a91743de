"""The gateway's own upstream HTTP/1.1 client, desync-proof by construction.

A keep-alive pool on asyncio transports with httptools (llhttp) parsing responses. A
connection is reused only after a response whose end was framed unambiguously and read in
full; any byte that arrives while no request is outstanding closes it. See the README,
"Upstream HTTP client", for the rules.
"""

from gateway.http1.client import UpstreamClient
from gateway.http1.connection import CloseCause
from gateway.http1.errors import (
    BadResponse,
    BodyTimeout,
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    Http1Error,
    InvalidRequest,
    ResponseTimeout,
)
from gateway.http1.pool import PoolStats
from gateway.http1.response import UpstreamResponse

__all__ = [
    "BadResponse",
    "BodyTimeout",
    "CloseCause",
    "ConnectFailed",
    "ConnectTimeout",
    "ConnectionLost",
    "Http1Error",
    "InvalidRequest",
    "PoolStats",
    "ResponseTimeout",
    "UpstreamClient",
    "UpstreamResponse",
]
