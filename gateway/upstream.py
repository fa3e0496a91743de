"""The boundary to the EXACT API: one pooled client, header hygiene, and error translation.

Every call to the API goes through :meth:`Upstream.send`, the one place where aiohttp's
exceptions become the gateway's own (:mod:`gateway.errors`). The session is built for a
proxy's hot path: keep-alive pooling with no connection cap below the gateway's own limits,
no cookie jar (a shared proxy must never carry one caller's cookies to another), no automatic
decompression (bytes pass through as EXACT sent them), no redirects followed, and no headers
added that the caller did not send. Which caller headers are sent is decided in
:mod:`gateway.header_policy`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.egress import Egress
from gateway.errors import UpstreamTimeout, UpstreamUnreachable
from gateway.header_policy import connection_named, forwarded_upstream, is_hop_by_hop

API_VERSION_HEADER = "x-api-version"
DEFAULT_API_VERSION = "1.0"


def _connection_named(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    return connection_named(headers.getall("Connection", ()))


def forwarded_value(incoming: CIMultiDictProxy[str], name: str) -> str | None:
    """The value of ``name`` as it will be sent upstream, or None if it will not be.

    A header the caller's own ``Connection`` names is hop-by-hop and stripped, so what the
    gateway decides from it (e.g. whether a POST is keyed) follows what EXACT will see.
    """
    if not forwarded_upstream(name.lower(), _connection_named(incoming)):
        return None
    values = incoming.getall(name, ())
    if len(values) != 1:
        return None if not values else ",".join(values)
    return values[0]


def request_headers(
    incoming: CIMultiDictProxy[str], token: str, request_id: str
) -> CIMultiDict[str]:
    """Headers to send upstream: the caller's end-to-end headers and the gateway's own."""
    declared = _connection_named(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if forwarded_upstream(name.lower(), declared):
            out.add(name, value)
    out["Authorization"] = f"Bearer {token}"
    out["X-Request-ID"] = request_id
    if API_VERSION_HEADER not in out:
        out[API_VERSION_HEADER] = DEFAULT_API_VERSION
    return out


def response_headers(incoming: CIMultiDictProxy[str], request_id: str) -> CIMultiDict[str]:
    """Headers to return to the caller: EXACT's end-to-end headers and our request id."""
    declared = _connection_named(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if not is_hop_by_hop(name.lower(), declared):
            out.add(name, value)
    out["X-Request-ID"] = request_id
    return out


def build_session(
    *, connect_timeout: float, attempt_timeout: float, egress: Egress | None = None
) -> aiohttp.ClientSession:
    """The one pooled session to the EXACT API for the life of the gateway."""
    egress = egress if egress is not None else Egress()
    connector = aiohttp.TCPConnector(
        ssl=egress.ssl_context(),
        # 0 = no cap: the connection pool must not limit concurrency below the gateway's own
        # global limit (README "Resilience", concurrency limits).
        limit=0,
        limit_per_host=0,
        ttl_dns_cache=300,
        keepalive_timeout=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        # aiohttp would otherwise add Accept-Encoding (and then EXACT might compress for a
        # caller that never asked) and its own User-Agent and Content-Type.
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=attempt_timeout
        ),
        trust_env=False,
        raise_for_status=False,
        proxy=egress.proxy,
    )


class Upstream:
    """Sends attempts to the EXACT API and translates its failures."""

    def __init__(self, session: aiohttp.ClientSession, api_url: str, attempt_timeout: float):
        self._session = session
        self._api_url = api_url
        self._attempt_timeout = attempt_timeout

    async def send(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None,
        limit: float | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one attempt and return once EXACT's response headers have arrived.

        ``target`` is the caller's origin-form path and query, appended byte for byte to the
        API URL (``encoded=True``: no re-quoting, so what EXACT sees is what the caller sent).
        ``limit`` is the time allowed for this attempt (default: the attempt time-out).
        """
        url = URL(self._api_url + target, encoded=True)
        try:
            async with asyncio.timeout(limit if limit is not None else self._attempt_timeout):
                return await self._session.request(
                    method, url, headers=headers, data=body, allow_redirects=False
                )
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamTimeout(
                "could not connect to the EXACT API in time", connecting=True
            ) from None
        except TimeoutError:
            raise UpstreamTimeout("the EXACT API did not answer within the time-out") from None
        except aiohttp.ClientConnectorError:
            # DNS, refused connections, TLS and certificate failures: nothing was sent yet.
            raise UpstreamUnreachable("could not connect to the EXACT API", sent=False) from None
        except aiohttp.ClientError as exc:
            # Disconnects, malformed responses: no usable answer from the EXACT host.
            raise UpstreamUnreachable(
                f"the connection to the EXACT API failed ({type(exc).__name__})"
            ) from None
