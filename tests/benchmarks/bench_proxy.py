"""What the gateway costs, against what the machine and the framework can do, in one run.

One run starts an upstream on loopback (nginx serving a static ~600-byte practice-details
JSON and a static token when ``nginx`` is installed, otherwise the built-in sandbox) and then
measures, with the same tool and parameters, interleaved over ``--rounds`` rounds:

- ``direct``: the upstream itself;
- ``nginx_proxy``: nginx as a reverse proxy in front of it (one worker, keep-alive upstream
  pool): what a mature proxy adds (needs nginx);
- ``hello``: a bare aiohttp hello server (``web.Application`` and one route), the
  framework's ceiling for a Python server on this machine;
- ``gateway``: ``python -m gateway serve`` at its defaults (log level ``info``: one JSON
  access line per request);
- ``fastfail``: the gateway answering a practice whose breaker is open (503
  ``circuit_open``), which does no I/O upstream.

Each at every ``--connections`` count (default 32 and 1). It prints requests/s, p50 and p99
latency, CPU microseconds per request of the process under test (utime+stime deltas from
/proc/<pid>/stat, children included), the best round of each, and the ratios to ``hello``
and ``direct``. Where ``taskset`` exists and two CPUs are usable, the process under test runs
alone on the last CPU and everything else (the load tool, the upstream, this script) on the
first.

Run::

    python tests/benchmarks/bench_proxy.py [--duration S] [--rounds N] [--connections 32,1]
        [--upstream auto|nginx|sandbox] [--tool auto|wrk|builtin] [--path P] [--warmup S]

The load tool is ``wrk`` when installed, otherwise a built-in aiohttp load generator that runs
in a child process of this same file (so it never shares an event loop or a GIL with anything
it measures). Everything listens on 127.0.0.1 only, every phase has a bounded duration, and
every process started here is stopped on exit, on Ctrl-C and on SIGTERM. The exit status is
non-zero when any request failed or answered unexpectedly (non-2xx, or anything but 503 for
``fastfail``), so a run cannot silently measure errors:
0 = clean, 1 = errors or unexpected statuses seen, 2 = could not start or finish, 130 =
interrupted.

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
# The practice the fast-fail run asks for: its upstream answers 503 until its breaker opens.
OFFLINE_PATH = "/v1/Practices/UKOFFLINE1/details"
# wrk spreads its requests over this many practice ids (as a real partner's traffic does:
# one breaker and one bulkhead entry per practice).
PRACTICE_IDS = 100
WRK_SCRIPT = """\
local i = 0
request = function()
  i = (i % {n}) + 1
  return wrk.format("GET", string.format("{prefix}%d{suffix}", i))
end
"""
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
        location /v1/Practices/UKOFFLINE1/ {{
            add_header Retry-After 300 always;
            return 503 '{{"message":"practice offline"}}';
        }}
        location /v1/ {{ return 200 '{body}'; }}
        location / {{ return 404; }}
    }}
}}
"""


# nginx as a reverse proxy: one worker, a keep-alive pool to the upstream (what the gateway
# does), no buffering to disk.
NGINX_PROXY_CONF = """\
worker_processes 1;
pid {tmp}/nginx-proxy.pid;
error_log {tmp}/error-proxy.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/p_client_body;
    proxy_temp_path {tmp}/p_proxy;
    fastcgi_temp_path {tmp}/p_fastcgi;
    uwsgi_temp_path {tmp}/p_uwsgi;
    scgi_temp_path {tmp}/p_scgi;
    upstream exact {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://exact;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
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
        cpu: int | None = None,
    ) -> Child:
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
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
    pid: int


@dataclass(frozen=True)
class Server:
    """A process under test and the port it serves on."""

    child: Child
    port: int


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
    return Upstream(
        "nginx", port, "bench-client", "bench-secret", "practice.get", {}, child.process.pid
    )


def start_nginx_proxy(children: Children, tmp: Path, upstream: int, cpu: int | None) -> Server:
    port = free_port()
    conf = tmp / "nginx-proxy.conf"
    conf.write_text(NGINX_PROXY_CONF.format(tmp=tmp, port=port, upstream=upstream))
    argv = ["nginx", "-p", str(tmp), "-e", str(tmp / "error-proxy.log"), "-c", str(conf)]
    child = children.start("nginx_proxy", [*argv, "-g", "daemon off;"], cpu=cpu)
    wait_for(child, port, PRACTICE_PATH)
    return Server(child, port)


def start_hello(children: Children, tmp: Path, cpu: int | None) -> Server:
    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--hello", str(port)]
    child = children.start("hello", argv, cwd=tmp, env=clean_env(), cpu=cpu)
    wait_for(child, port, PRACTICE_PATH)
    return Server(child, port)


def serve_hello(port: int) -> None:
    """A bare aiohttp hello server: web.Application, one route, the same JSON body."""
    from aiohttp import web  # noqa: PLC0415 - only this child process needs the server side

    body = json.dumps(PRACTICE_DETAILS, separators=(",", ":")).encode()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


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
        child.process.pid,
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
    children: Children,
    tmp: Path,
    upstream: Upstream,
    *,
    log_level: str,
    connections: int,
    cpu: int | None,
    source: str | None,
    extra: Sequence[str] = (),
) -> Gateway:
    # The ports are chosen here and readiness is read from /readyz, which also proves a token.
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
    for setting in extra:
        name, _, value = setting.partition("=")
        env[f"EXACT_GATEWAY_{name.upper()}"] = value
    if source is not None:
        env["PYTHONPATH"] = source  # another checkout's gateway (a before/after comparison)
    # cwd=tmp: a stray .env file in the caller's directory must not configure the gateway.
    argv = [sys.executable, "-m", "gateway", "serve"]
    child = children.start("gateway", argv, cwd=tmp, env=env, cpu=cpu)
    wait_for(child, admin_port, "/readyz")
    return Gateway(child, port, admin_port)


def family(pid: int) -> list[int]:
    """A process and all its descendants (nginx's workers), from /proc."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += family(int(child))
    return found


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process and its descendants, in seconds (/proc/<pid>/stat)."""
    ticks = 0
    for member in family(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): utime and stime are 14, 15.
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


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
    cpu_us: float = 0.0  # CPU of the process under test per request


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


def run_wrk(
    url: str, duration: int, connections: int, headers: dict[str, str], script: Path | None
) -> Load:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", f"--timeout={REQUEST_TIMEOUT_S}s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    if script is not None:
        argv += ["-s", str(script)]
    return parse_wrk(run_bounded([*argv, "--latency", url], timeout=duration + 30))


def run_builtin(
    url: str, duration: int, connections: int, headers: dict[str, str], script: Path | None
) -> Load:
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
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best kept)")
    parser.add_argument(
        "--connections", default="32,1", help="concurrent connections, comma-separated"
    )
    parser.add_argument("--upstream", choices=["auto", "nginx", "sandbox"], default="auto")
    parser.add_argument("--tool", choices=["auto", "wrk", "builtin"], default="auto")
    parser.add_argument("--path", default=PRACTICE_PATH, help="request path (GET)")
    parser.add_argument("--log-level", default="info", help="the gateway's log level")
    parser.add_argument(
        "--targets",
        default="direct,nginx_proxy,hello,gateway,fastfail",
        help="which targets to measure, comma-separated",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin CPUs with taskset")
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a gateway setting for this run, e.g. EVENT_LOOP=asyncio (repeatable)",
    )
    parser.add_argument(
        "--gateway-source",
        metavar="DIR",
        help="run the gateway from this source tree (PYTHONPATH), e.g. an older commit",
    )
    # The built-in load generator and the hello server are this same file in a child process.
    parser.add_argument("--loadgen", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--header", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--hello", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.connections = [int(n) for n in str(args.connections).split(",")]
    except ValueError:
        parser.error("--connections takes whole numbers, comma-separated")
    args.targets = [t for t in args.targets.split(",") if t]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.duration < 1 or args.warmup < 0 or args.rounds < 1 or min(args.connections) < 1:
        parser.error("need --duration >= 1, --warmup >= 0, --rounds >= 1, --connections >= 1")
    if not args.path.startswith("/"):
        parser.error("--path must start with /")
    return args


TARGETS = ("direct", "nginx_proxy", "hello", "gateway", "fastfail")


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


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.3f}" if denominator > 0 else "n/a"


def report(connections: int, results: dict[str, Load]) -> None:
    print(f"-- {connections} connection(s), best round of each --")
    print(
        f"{'target':<12} {'requests':>9} {'requests/s':>11} {'p50 ms':>9} {'p99 ms':>9}"
        f" {'cpu us/req':>11} {'non-2xx':>10} {'errors':>7}"
    )
    for name, r in results.items():
        print(
            f"{name:<12} {r.requests:>9} {r.rps:>11.1f} {r.p50_ms:>9.3f} {r.p99_ms:>9.3f}"
            f" {r.cpu_us:>11.1f} {r.non_2xx:>10} {r.errors:>7}"
        )
    print()
    for base in ("hello", "direct"):
        if base not in results:
            continue
        b = results[base]
        for name, r in results.items():
            if name != base:
                print(
                    f"ratio {name}/{base}: throughput {ratio(r.rps, b.rps)},"
                    f" p50 {ratio(r.p50_ms, b.p50_ms)}, p99 {ratio(r.p99_ms, b.p99_ms)},"
                    f" cpu {ratio(r.cpu_us, b.cpu_us)}"
                )
    if "direct" in results:
        direct = results["direct"]
        for name in ("nginx_proxy", "gateway"):
            if name in results:
                r = results[name]
                print(
                    f"added by {name}: p50 {r.p50_ms - direct.p50_ms:+.3f} ms,"
                    f" p99 {r.p99_ms - direct.p99_ms:+.3f} ms"
                )
    for name in ("gateway", "fastfail"):
        if name in results:
            print(f"{name} p99/p50: {ratio(results[name].p99_ms, results[name].p50_ms)}")
    print(flush=True)


def pinning(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """(CPU of the process under test, CPU of everything else), or (None, None)."""
    usable = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(usable) < 2 or shutil.which("taskset") is None:
        return None, None
    return usable[-1], usable[0]


def open_breaker(port: int) -> None:
    """Ask for the offline practice until the gateway refuses it with circuit_open."""
    for _ in range(30):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", OFFLINE_PATH)
            response = conn.getresponse()
            response.read()
            if response.getheader("X-Gateway-Error") == "circuit_open":
                return
        finally:
            conn.close()
    raise BenchmarkError("the offline practice's breaker did not open")


@dataclass
class Target:
    name: str
    port: int
    pid: int
    headers: dict[str, str]
    path: str
    expected: int  # the status every answer must have


def start_targets(
    args: argparse.Namespace, children: Children, tmp: Path, upstream: Upstream, cpu: int | None
) -> tuple[list[Target], Gateway | None]:
    """Start every process under test (pinned to ``cpu``) and say where each target is."""
    proxy_cpu = cpu
    targets: list[Target] = []
    for name in args.targets:
        if name == "direct":
            targets.append(
                Target(name, upstream.port, upstream.pid, upstream.direct_headers, args.path, 200)
            )
        elif name == "nginx_proxy" and upstream.kind == "nginx":
            server = start_nginx_proxy(children, tmp, upstream.port, proxy_cpu)
            targets.append(Target(name, server.port, server.child.process.pid, {}, args.path, 200))
        elif name == "hello":
            server = start_hello(children, tmp, proxy_cpu)
            targets.append(Target(name, server.port, server.child.process.pid, {}, args.path, 200))
    gateway = None
    if {"gateway", "fastfail"} & set(args.targets):
        gateway = start_gateway(
            children,
            tmp,
            upstream,
            log_level=args.log_level,
            connections=max(args.connections),
            cpu=proxy_cpu,
            source=args.gateway_source,
            extra=args.gateway_env,
        )
        pid = gateway.child.process.pid
        if "gateway" in args.targets:
            targets.append(Target("gateway", gateway.port, pid, {}, args.path, 200))
        if "fastfail" in args.targets:
            open_breaker(gateway.port)
            targets.append(Target("fastfail", gateway.port, pid, {}, OFFLINE_PATH, 503))
    return targets, gateway


def benchmark(args: argparse.Namespace, children: Children, tmp: Path) -> int:
    kind = choose(args.upstream, "nginx", "sandbox")
    tool = choose(args.tool, "wrk", "builtin")
    drive = run_wrk if tool == "wrk" else run_builtin
    proxy_cpu, other_cpu = pinning(args)
    if other_cpu is not None:
        os.sched_setaffinity(0, {other_cpu})  # this script and what it starts unpinned
    upstream = start_nginx(children, tmp) if kind == "nginx" else start_sandbox(children, tmp)
    targets, gateway = start_targets(args, children, tmp, upstream, proxy_cpu)
    for target in targets:
        status, _ = http_call(target.port, "GET", target.path, target.headers)
        if status != target.expected:
            raise BenchmarkError(f"{target.name} answered {status} for GET {target.path}")
    # wrk spreads the practice-details load over PRACTICE_IDS practices (built-in: one path).
    script = None
    if tool == "wrk" and args.path == PRACTICE_PATH:
        script = tmp / "practices.lua"
        prefix, suffix = "/v1/Practices/UKBENCH", "/details"
        script.write_text(WRK_SCRIPT.format(n=PRACTICE_IDS, prefix=prefix, suffix=suffix))

    cores = os.cpu_count()
    load1, load5, _ = os.getloadavg()
    print(f"exact-gateway benchmark: GET {args.path}")
    print(f"machine: {cores} cores, load average {load1:.2f} {load5:.2f}")
    pinned = (
        f"process under test alone on CPU {proxy_cpu}, load tool and upstream on CPU {other_cpu}"
        if proxy_cpu is not None
        else "not pinned"
    )
    print(f"pinning: {pinned}")
    print(f"upstream: {kind} on 127.0.0.1:{upstream.port}; gateway log level {args.log_level}")
    print(
        f"tool: {tool}, {args.rounds} interleaved round(s) of {args.duration} s per target"
        f" after {args.warmup} s warm-up"
        + (" (wrk -t1 --latency)" if tool == "wrk" else " (aiohttp, separate process)")
        + (f", {PRACTICE_IDS} practice ids" if script is not None else "")
    )
    print(flush=True)

    failures = 0
    for connections in args.connections:
        best: dict[str, Load] = {}
        for _ in range(args.rounds):
            for target in targets:
                uses = script if target.name != "fastfail" else None
                url = f"http://127.0.0.1:{target.port}{target.path}"
                if args.warmup:
                    warm = drive(url, args.warmup, connections, target.headers, uses)
                    failures += unexpected(warm, target) + warm.errors
                before = cpu_seconds(target.pid)
                load = drive(url, args.duration, connections, target.headers, uses)
                used = cpu_seconds(target.pid) - before
                load = Load(
                    **{**load.__dict__, "cpu_us": used * 1e6 / max(1, load.requests)},
                )
                failures += unexpected(load, target) + load.errors
                if target.name not in best or load.rps > best[target.name].rps:
                    best[target.name] = load
                if gateway is not None and (gone := gateway.child.exited()) is not None:
                    raise BenchmarkError(gone)
        report(connections, best)

    if gateway is not None:
        rss, peak = memory_mib(gateway.child.process.pid)
        print(f"gateway RSS at end: {rss:.1f} MiB (peak {peak:.1f} MiB)")
    if failures:
        print(
            f"FAILED: {failures} requests failed or answered unexpectedly (warm-up included);"
            " these figures measure errors, not the proxy",
            file=sys.stderr,
        )
        return 1
    return 0


def unexpected(load: Load, target: Target) -> int:
    """Answers with the wrong status: non-2xx where 200 is expected, 2xx for the fast-fail."""
    if target.expected == 200:
        return load.non_2xx
    return load.requests - load.non_2xx


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up exactly like Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.hello is not None:
        serve_hello(args.hello)
        return 0
    if args.loadgen:
        headers = dict(h.split(": ", 1) for h in args.header)
        load = asyncio.run(generate_load(args.loadgen, args.duration, args.connections[0], headers))
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
