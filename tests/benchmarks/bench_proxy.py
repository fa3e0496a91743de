"""What the gateway costs: the same load against an upstream directly and through the gateway.

One run starts an upstream on loopback (nginx serving a static ~600-byte practice-details
JSON and a static token when ``nginx`` is installed, otherwise the built-in sandbox), starts
``python -m gateway serve`` pointed at it, then drives the same load with the same tool and
parameters at (a) the upstream directly and (b) the gateway, each after a short warm-up. It
prints requests/s, p50 and p99 latency, non-2xx and error counts for both, the
gateway/direct ratios, the core count, the load tool and the gateway's resident memory.

Run::

    python tests/benchmarks/bench_proxy.py [--duration S] [--connections N]
        [--upstream auto|nginx|sandbox] [--tool auto|wrk|builtin] [--path P] [--warmup S]

The load tool is ``wrk`` when installed, otherwise a built-in aiohttp load generator that runs
in a child process of this same file (so it never shares an event loop or a GIL with anything
it measures). Everything listens on 127.0.0.1 only, every phase has a bounded duration, and
every process started here is stopped on exit, on Ctrl-C and on SIGTERM. The exit status is
non-zero when any request failed or answered non-2xx, so a run cannot silently measure errors:
0 = clean, 1 = errors or non-2xx seen, 2 = could not start or finish, 130 = interrupted.

See tests/benchmarks/README.md for how to read the ratios and the caveats of a small machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import aiohttp

PRACTICE_PATH = "/v1/Practices/UKTEST1/details"
SANDBOX_CLIENT_ID = "sandbox-partner"
SANDBOX_CLIENT_SECRET = "sandbox-secret-not-for-production"  # the sandbox's published demo secret
REQUEST_TIMEOUT_S = 5  # per request, for both tools: a stuck request counts as an error
START_TIMEOUT_S = 30

# A realistic practice-details answer (EXACT's GetPracticeDetails shape), about 600 bytes. It is
# served by nginx's `return`, so it must not contain quotes, `$` or backslashes.
PRACTICE_DETAILS = {
    "practiceId": "UKTEST1",
    "practiceName": "Abbey Road Dental Practice",
    "organizationName": "Abbey Road Dental Practice Ltd",
    "address": {
        "line1": "50 Manor Close",
        "line2": "",
        "line3": "Winchester",
        "line4": "Hampshire",
        "postCode": "SO23 5RW",
    },
    "phoneNumber": "01632 960282",
    "emailAddress": "reception@abbeyroaddental.example.com",
    "websiteAddress": "https://www.abbeyroaddental.example.com",
    "country": "United Kingdom",
    "openingHours": {
        "monday": {"open": "08:30", "close": "17:30"},
        "tuesday": {"open": "08:30", "close": "17:30"},
    },
    "practiceTimezoneUtcOffsetMinutes": 60,
    "pmsVersion": "13.860",
    "updatedOn": "2024-04-28T18:02:11+01:00",
}
STATIC_TOKEN = {"access_token": "bench-static-token", "expires_in": 3600, "token_type": "Bearer"}

NGINX_CONF = """\
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_timeout 75s;
    # The default (1000) would make both wrk and the gateway's pool reconnect every second.
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        default_type application/json;
        location = /connect/token {{ return 200 '{token}'; }}
        location /v1/ {{ return 200 '{body}'; }}
        location / {{ return 404; }}
    }}
}}
"""


class BenchmarkError(Exception):
    """The benchmark could not start or run to the end; its figures, if any, mean nothing."""


# --- processes ---------------------------------------------------------------------------


@dataclass
class Child:
    """A process started here, with its output drained by a thread so its pipe never fills."""

    name: str
    process: subprocess.Popen[bytes]
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))

    def drain(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.tail.append(raw.decode(errors="replace").rstrip())

    def exited(self) -> str | None:
        """A description of the exit if the process is gone, else None."""
        code = self.process.poll()
        if code is None:
            return None
        return f"{self.name} exited with {code}:\n" + "\n".join(self.tail)


@dataclass
class Children:
    """Every long-running process of this run, stopped in reverse start order."""

    started: list[Child] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Child:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            # Own session: Ctrl-C reaches only this script, which then stops children in order.
            start_new_session=True,
        )
        child = Child(name, process)
        self.started.append(child)
        threading.Thread(target=child.drain, name=f"drain-{name}", daemon=True).start()
        return child

    def stop_all(self) -> None:
        for child in reversed(self.started):
            if child.process.poll() is None:
                child.process.terminate()
        for child in reversed(self.started):
            try:
                child.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(timeout=5)
        self.started.clear()


def run_bounded(argv: Sequence[str], timeout: float) -> str:
    """Run a load tool to completion; its own session so that it is killed with its children."""
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except BaseException:  # timeout, Ctrl-C or SIGTERM: never leave the tool running
            process.kill()
            process.wait()
            raise
    if process.returncode != 0:
        raise BenchmarkError(f"{argv[0]} exited with {process.returncode}: {err.decode().strip()}")
    return out.decode()


def free_port() -> int:
    # The port is free now; whoever binds it next could in theory race us, but on a loopback
    # benchmark box that is rare and shows up as a clear start failure, not a wrong result.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_call(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: str | None = None,
) -> tuple[int, bytes]:
    """One plain HTTP/1.1 call on loopback (http.client: no proxy settings can interfere)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_for(child: Child, port: int, path: str) -> None:
    """Poll ``GET path`` until it answers 200, failing early if the process died."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if (gone := child.exited()) is not None:
            raise BenchmarkError(gone)
        try:
            status, body = http_call(port, "GET", path)
        except OSError as exc:
            last = repr(exc)
        else:
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        time.sleep(0.1)
    raise BenchmarkError(f"{child.name} not ready on port {port} after {START_TIMEOUT_S}s: {last}")


# --- upstream and gateway ------------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    kind: str
    port: int
    client_id: str
    client_secret: str
    scopes: str
    direct_headers: dict[str, str]  # what a direct caller must send (the gateway adds its own)


def start_nginx(children: Children, tmp: Path) -> Upstream:
    port = free_port()
    body = json.dumps(PRACTICE_DETAILS, separators=(",", ":"))
    token = json.dumps(STATIC_TOKEN, separators=(",", ":"))
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, token=token, body=body))
    # -e: nginx opens its error log before reading the config; keep even that in tmp.
    argv = ["nginx", "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)]
    child = children.start("nginx", [*argv, "-g", "daemon off;"])
    wait_for(child, port, PRACTICE_PATH)
    return Upstream("nginx", port, "bench-client", "bench-secret", "practice.get", {})


def start_sandbox(children: Children, tmp: Path) -> Upstream:
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "sandbox", "--host", "127.0.0.1", "--port", str(port)]
    child = children.start("sandbox", argv, cwd=tmp, env=clean_env())
    wait_for(child, port, "/.well-known/openid-configuration")
    # Direct calls need what the gateway would otherwise add: a bearer token.
    basic = _basic(SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
    status, raw = http_call(
        port,
        "POST",
        "/connect/token",
        {"Authorization": basic, "Content-Type": "application/x-www-form-urlencoded"},
        "grant_type=client_credentials&scope=practice.get",
    )
    if status != 200:
        raise BenchmarkError(f"sandbox token endpoint answered {status}: {raw[:200]!r}")
    token = json.loads(raw)["access_token"]
    return Upstream(
        "sandbox",
        port,
        SANDBOX_CLIENT_ID,
        SANDBOX_CLIENT_SECRET,
        "practice.get",
        {"Authorization": f"Bearer {token}"},
    )


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def clean_env(**settings: str) -> dict[str, str]:
    """This environment minus any EXACT_GATEWAY_* of the developer's, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXACT_GATEWAY_")}
    env.update({f"EXACT_GATEWAY_{name.upper()}": value for name, value in settings.items()})
    return env


@dataclass(frozen=True)
class Gateway:
    child: Child
    port: int
    admin_port: int


def start_gateway(
    children: Children, tmp: Path, upstream: Upstream, log_level: str, connections: int
) -> Gateway:
    # At log level warning there is no 'listening' line to read the ports from (and at info
    # every request writes an access-log line, which is not what we want to measure), so the
    # ports are chosen here and readiness is read from /readyz, which also proves a token.
    port, admin_port = free_port(), free_port()
    api = f"http://127.0.0.1:{upstream.port}"
    env = clean_env(
        environment="qa",
        api_url=api,
        token_url=f"{api}/connect/token",
        client_id=upstream.client_id,
        client_secret=upstream.client_secret,
        scopes=upstream.scopes,
        host="127.0.0.1",
        port=str(port),
        admin_host="127.0.0.1",
        admin_port=str(admin_port),
        log_level=log_level,
        shutdown_grace_seconds="0",
        drain_seconds="2",
        # The load goes to one practice: its concurrency limit (10 by default, to protect
        # a small on-premises server) would turn the benchmark into a practice_busy test.
        practice_concurrency=str(max(10, connections)),
    )
    # cwd=tmp: a stray .env file in the caller's directory must not configure the gateway.
    argv = [sys.executable, "-m", "gateway", "serve"]
    child = children.start("gateway", argv, cwd=tmp, env=env)
    wait_for(child, admin_port, "/readyz")
    return Gateway(child, port, admin_port)


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB, from /proc."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"VmRSS", "VmHWM"}:
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


# --- load ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _wrk_ms(text: str, percent: str) -> float:
    match = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.MULTILINE)
    if match is None:
        raise BenchmarkError(f"no {percent}% latency line in wrk output:\n{text}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(text: str) -> Load:
    """Read wrk's ``--latency`` report."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ", text, re.MULTILINE)
    if rps is None or total is None:
        raise BenchmarkError(f"unexpected wrk output:\n{text}")
    # wrk's "Non-2xx or 3xx" counts statuses >= 400; the pre-flight check insists on 200.
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return Load(
        requests=int(total.group(1)),
        rps=float(rps.group(1)),
        p50_ms=_wrk_ms(text, "50"),
        p99_ms=_wrk_ms(text, "99"),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


def run_wrk(url: str, duration: int, connections: int, headers: dict[str, str]) -> Load:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", f"--timeout={REQUEST_TIMEOUT_S}s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    return parse_wrk(run_bounded([*argv, "--latency", url], timeout=duration + 30))


def run_builtin(url: str, duration: int, connections: int, headers: dict[str, str]) -> Load:
    argv = [sys.executable, str(Path(__file__).resolve()), "--loadgen", url]
    argv += ["--duration", str(duration), "--connections", str(connections)]
    for name, value in headers.items():
        argv += ["--header", f"{name}: {value}"]
    out = run_bounded(argv, timeout=duration + 30)
    return Load(**json.loads(out.strip().splitlines()[-1]))


def percentile(ordered: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile of an ascending sequence (what wrk reports, too)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


async def generate_load(
    url: str, duration: float, connections: int, headers: dict[str, str]
) -> Load:
    """``connections`` closed-loop workers, each sending its next request when one completes."""
    latencies: list[float] = []
    non_2xx = errors = 0
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        started = loop.time()
        stop_at = started + duration

        async def worker() -> None:
            nonlocal non_2xx, errors
            while loop.time() < stop_at:
                sent = time.perf_counter()
                try:
                    async with session.get(url, headers=headers) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)
                if not 200 <= status < 300:
                    non_2xx += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = loop.time() - started
    latencies.sort()
    return Load(
        requests=len(latencies),
        rps=len(latencies) / elapsed,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        non_2xx=non_2xx,
        errors=errors,
    )


# --- the run -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds measured per target")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per target")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument("--upstream", choices=["auto", "nginx", "sandbox"], default="auto")
    parser.add_argument("--tool", choices=["auto", "wrk", "builtin"], default="auto")
    parser.add_argument("--path", default=PRACTICE_PATH, help="request path (GET)")
    parser.add_argument(
        "--log-level", default="warning", help="gateway log level (info adds access logs)"
    )
    # The built-in load generator is this same file in a child process (hidden from --help).
    parser.add_argument("--loadgen", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--header", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duration < 1 or args.warmup < 0 or args.connections < 1:
        parser.error("need --duration >= 1, --warmup >= 0 and --connections >= 1")
    if not args.path.startswith("/"):
        parser.error("--path must start with /")
    return args


def choose(requested: str, binary: str, fallback: str) -> str:
    if requested == "auto":
        return binary if shutil.which(binary) else fallback
    if requested == binary and not shutil.which(binary):
        raise BenchmarkError(f"{binary} is not installed; {fallback} works without it")
    return requested


def preflight(name: str, port: int, path: str, headers: dict[str, str]) -> int:
    """One request before any load: the target must answer 200, or nothing is worth measuring."""
    status, body = http_call(port, "GET", path, headers)
    if status != 200:
        raise BenchmarkError(f"{name} answered {status} for GET {path}: {body[:300]!r}")
    return len(body)


def ratio(gateway: float, direct: float) -> str:
    return f"{gateway / direct:.3f}x" if direct > 0 else "n/a"


def report(results: dict[str, Load]) -> None:
    print(
        f"{'target':<8} {'requests':>9} {'requests/s':>11} {'p50 ms':>9} {'p99 ms':>9}"
        f" {'non-2xx':>8} {'errors':>7}"
    )
    for name, r in results.items():
        print(
            f"{name:<8} {r.requests:>9} {r.rps:>11.1f} {r.p50_ms:>9.3f} {r.p99_ms:>9.3f}"
            f" {r.non_2xx:>8} {r.errors:>7}"
        )
    direct, gateway = results["direct"], results["gateway"]
    print()
    print(
        f"ratio gateway/direct: throughput {ratio(gateway.rps, direct.rps)},"
        f" p50 {ratio(gateway.p50_ms, direct.p50_ms)}, p99 {ratio(gateway.p99_ms, direct.p99_ms)}"
    )
    print(
        f"added by the gateway: p50 {gateway.p50_ms - direct.p50_ms:+.3f} ms,"
        f" p99 {gateway.p99_ms - direct.p99_ms:+.3f} ms"
    )


def benchmark(args: argparse.Namespace, children: Children, tmp: Path) -> int:
    kind = choose(args.upstream, "nginx", "sandbox")
    tool = choose(args.tool, "wrk", "builtin")
    drive = run_wrk if tool == "wrk" else run_builtin
    upstream = start_nginx(children, tmp) if kind == "nginx" else start_sandbox(children, tmp)
    gateway = start_gateway(children, tmp, upstream, args.log_level, args.connections)

    targets = {
        "direct": (upstream.port, upstream.direct_headers),
        "gateway": (gateway.port, {}),
    }
    sizes = {name: preflight(name, port, args.path, h) for name, (port, h) in targets.items()}
    # Equal sizes show that both targets answer the same thing; say so when they do not.
    via = "" if sizes["gateway"] == sizes["direct"] else f", {sizes['gateway']} via the gateway"
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0))
    load1, load5, _ = os.getloadavg()
    print(f"exact-gateway benchmark: GET {args.path}")
    print(f"machine: {cores} cores ({usable} usable), load average {load1:.2f} {load5:.2f}")
    print(
        f"upstream: {kind} on 127.0.0.1:{upstream.port} ({sizes['direct']}-byte body{via});"
        f" gateway on 127.0.0.1:{gateway.port} (log level {args.log_level})"
    )
    print(
        f"tool: {tool}, {args.connections} connections, {args.duration} s per target"
        f" after {args.warmup} s warm-up"
        + (" (wrk -t1 --latency)" if tool == "wrk" else " (aiohttp, separate process)")
    )
    print(flush=True)

    results: dict[str, Load] = {}
    warmup_failures = 0
    for name, (port, headers) in targets.items():
        url = f"http://127.0.0.1:{port}{args.path}"
        if args.warmup:
            warm = drive(url, args.warmup, args.connections, headers)
            warmup_failures += warm.non_2xx + warm.errors
        results[name] = drive(url, args.duration, args.connections, headers)
        if (gone := gateway.child.exited()) is not None:
            raise BenchmarkError(gone)
    report(results)

    rss, peak = memory_mib(gateway.child.process.pid)
    print(f"gateway RSS at end: {rss:.1f} MiB (peak {peak:.1f} MiB)")
    failures = warmup_failures + sum(r.non_2xx + r.errors for r in results.values())
    if failures:
        print(
            f"FAILED: {failures} requests failed or answered non-2xx (warm-up included);"
            " these figures measure errors, not the proxy",
            file=sys.stderr,
        )
        return 1
    return 0


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up exactly like Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loadgen:
        headers = dict(h.split(": ", 1) for h in args.header)
        load = asyncio.run(generate_load(args.loadgen, args.duration, args.connections, headers))
        print(json.dumps(load.__dict__))
        return 0

    signal.signal(signal.SIGTERM, _terminate)
    children = Children()
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        try:
            return benchmark(args, children, Path(tmp))
        except BenchmarkError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            children.stop_all()


if __name__ == "__main__":
    sys.exit(main())
