"""An OTLP/HTTP trace receiver that only counts: the collector end of a tracing benchmark.

Run it, then point a gateway at it with the standard variables, to measure what tracing
costs when it is on (tests/benchmarks/README.md, "Tracing on")::

    python tests/benchmarks/otlp_sink.py --port 4318 &
    OTEL_TRACES_EXPORTER=otlp OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \\
        python tests/benchmarks/bench_proxy.py --duration 5 --connections 32

It decodes each export (as a collector would, so the batch is really parsed), counts the
spans and prints the total on SIGTERM or Ctrl-C. Loopback only.
"""

from __future__ import annotations

import argparse

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

SPANS = web.AppKey("spans", list[int])


async def traces(request: web.Request) -> web.Response:
    export = ExportTraceServiceRequest()
    export.ParseFromString(await request.read())
    count = sum(len(s.spans) for r in export.resource_spans for s in r.scope_spans)
    request.app[SPANS][0] += count
    return web.Response(
        body=ExportTraceServiceResponse().SerializeToString(),
        content_type="application/x-protobuf",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SPANS] = [0]
    app.router.add_post("/v1/traces", traces)
    try:  # run_app turns SIGTERM and Ctrl-C into a clean stop
        web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)
    finally:
        print(f"spans received: {app[SPANS][0]}", flush=True)


if __name__ == "__main__":
    main()
