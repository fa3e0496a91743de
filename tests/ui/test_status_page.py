"""The admin status page in a real headless browser (Debian chromium), not just over HTTP."""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from gateway.app import Gateway
from gateway.sandbox import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from tests.fakes import (
    SandboxFactory,
    SandboxGatewayFactory,
    admin_url,
    control,
    proxy_url,
    wait_until,
)

WINDOW = (1280, 800)
OUTAGE = [f"UKREL{i}" for i in range(25)]
CHROMIUM = shutil.which("chromium") or "chromium"
# As the workplace's notes advise: no sandbox as root, and no background traffic that this
# machine's closed network would refuse.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,800",
    "--virtual-time-budget=4000",  # let the page's first fetch complete before capture
]


async def chromium(profile: Path, *args: str) -> bytes:
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    return stdout


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def path_points(dom: str, chart: str, series: str) -> int:
    """How many data points the script drew into one line of one chart."""
    svg = re.search(rf'<svg id="chart-{chart}"[^>]*>(.*?)</svg>', dom, re.S)
    assert svg is not None, chart
    line = re.search(rf'<path class="{series}" d="([^"]*)" data-points="(\d+)"', svg.group(1))
    assert line is not None, (chart, series)
    assert len(re.findall(r"[ML]", line.group(1))) == int(line.group(2))
    return int(line.group(2))


def keep_artifact(data: bytes, name: str) -> Path:
    """The screenshot goes to .pytest-artifacts/ (ignored by git; CI can upload it)."""
    keep = Path(__file__).resolve().parents[2] / ".pytest-artifacts"
    keep.mkdir(exist_ok=True)
    (keep / name).write_bytes(data)
    print(f"status page screenshot: {keep / name}")
    return keep / name


async def live_traffic(sandbox: TestServer, gateway: Gateway) -> None:
    """Two 10-second buckets of traffic: an EXACT-wide outage (the partner-wide breaker
    opens and closes again) and healthy answers, then slow answers and an offline practice
    until its breaker opens."""
    for practice in OUTAGE:
        await control(sandbox, "PUT", f"/practices/{practice}", {"behaviour": "offline"})
    async with aiohttp.ClientSession() as client:

        async def fetch(practice: str) -> None:
            url = proxy_url(gateway, f"/v1/Practices/{practice}/details")
            async with client.get(url) as resp:
                await resp.read()

        async def status() -> dict[str, Any]:
            async with client.get(admin_url(gateway, "/status")) as resp:
                document: dict[str, Any] = await resp.json()
                return document

        await asyncio.wait_for(gateway.tokens.ready_event.wait(), 10)
        for _ in range(3):
            for practice in OUTAGE:
                await fetch(practice)

        async def upstream_closed() -> bool:
            await fetch("UKTEST1")
            return (await status())["breakers"]["upstream"]["state"] == "closed"

        await wait_until(upstream_closed, 10)

        async def next_bucket() -> bool:
            # Healthy traffic until a bucket boundary passes, so every chart has a line.
            for practice in ("UKTEST1", "UKTEST2", "WFEVAL"):
                await fetch(practice)
            return sum(1 for n in (await status())["traffic"]["series"]["requests"] if n) >= 2

        await wait_until(next_bucket, 15)
        await asyncio.gather(*(fetch("UKSLOW1") for _ in range(3)))

        async def practice_open() -> bool:
            await fetch("UKOFFLINE1")
            return bool((await status())["breakers"]["practices"])

        await wait_until(practice_open, 10)
        for _ in range(3):
            await fetch("UKOFFLINE1")  # circuit_open: gateway-made


async def test_status_page_shows_the_last_15_minutes_in_a_browser(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory, tmp_path: Path
) -> None:
    """Chromium loads / (under its strict CSP) against a gateway with live traffic; the
    script fetches /status and draws the rate, errors-by-maker and latency charts with data
    points, the token countdown, the EXACT breaker's opening and closing, the token's fetch
    and the failing practice; a screenshot is taken, checked and kept."""
    sandbox = await make_sandbox(slow_latency_s=0.25)
    pauses = tmp_path / "pauses.json"
    pauses.write_text(
        '{"practices": {"UKERROR1": {"pause_until": "2999-01-01T00:00:00Z", "note": "move"}}}'
    )
    gateway = await start_on_sandbox(
        sandbox,
        practice_pauses_file=str(pauses),
        practice_pauses_poll_seconds=0.05,
        retry_max_attempts=1,
        upstream_breaker_practices=20,
        upstream_breaker_open_seconds=0.3,
        breaker_open_seconds=120.0,
    )
    await live_traffic(sandbox, gateway)

    async def ledger_knows() -> bool:
        view = gateway.practices.troubled()
        states = {row["practice_id"]: row["state"] for row in view["rows"]}  # type: ignore[attr-defined]
        return states.get("UKOFFLINE1") == "unavailable" and states.get("UKERROR1") == "paused"

    await wait_until(ledger_knows, 10)
    async with aiohttp.ClientSession() as client:
        async with client.get(admin_url(gateway, "/")) as resp:
            assert resp.status == 200
            assert "script-src 'sha256-" in resp.headers["Content-Security-Policy"]
            page = await resp.text()
        async with client.get(admin_url(gateway, "/status")) as resp:
            status_text = await resp.text()
    for text in (page, status_text):
        assert DEMO_CLIENT_SECRET not in text
        assert DEMO_CLIENT_ID not in text
        assert "eyJ" not in text  # no JWT
    assert "http" not in page.split("<script>")[0].lower().replace("http-equiv", "")

    url = admin_url(gateway, "/")
    dom = (await chromium(tmp_path / "dom", "--dump-dom", url)).decode()
    assert "v0.1.0" in dom
    assert 'id="ready" class="ok">\u2713 ready<' in dom
    # The token card, filled in by the script under the CSP: a countdown in minutes.
    assert re.search(r'id="token" class="ok">\u2713 \d+&nbsp;min \d+&nbsp;s<', dom)
    assert "left \u00b7 refresh in" in dom
    assert path_points(dom, "rate", "s-rate") >= 2
    assert path_points(dom, "errors", "s-gateway") >= 2
    assert path_points(dom, "errors", "s-exact") >= 2
    assert path_points(dom, "latency", "s-p50") >= 2
    assert path_points(dom, "latency", "s-p99") >= 2
    failing = re.search(r'<tbody id="failing">(.*?)</tbody>', dom, re.S)
    assert failing is not None
    assert "<td>UKOFFLINE1</td>" in failing.group(1)
    assert "\u2715 open" in failing.group(1)
    # The ledger's table: the offline practice and the paused one, each with a 24-hour strip
    # whose current hour shows failures (for UKOFFLINE1) drawn by the script under the CSP.
    troubled = re.search(r'<tbody id="troubled">(.*?)</tbody>', dom, re.S)
    assert troubled is not None
    offline = re.search(r"<tr><td>UKOFFLINE1</td>(.*?)</tr>", troubled.group(1), re.S)
    assert offline is not None
    assert "\u2715 unavailable" in offline.group(1)
    assert "<td>503</td>" in offline.group(1)
    assert 'data-hours="24"' in offline.group(1)
    assert len(re.findall(r'<rect class="h-', offline.group(1))) == 24
    assert re.search(r'<rect class="h-(down|mixed)"', offline.group(1))
    paused = re.search(r"<tr><td>UKERROR1</td>(.*?)</tr>", troubled.group(1), re.S)
    assert paused is not None
    assert "\u23f8 paused" in paused.group(1)
    assert "paused: move" in paused.group(1)
    breaker = re.search(r'<tbody id="breaker-events">(.*?)</tbody>', dom, re.S)
    assert breaker is not None
    assert "correlated, for" in breaker.group(1)
    assert "EXACT answering again" in breaker.group(1)
    tokens = re.search(r'<tbody id="token-events">(.*?)</tbody>', dom, re.S)
    assert tokens is not None
    assert "\u2713 new token" in tokens.group(1)
    assert re.search(r'id="updated" class="dim">updated \d\d:\d\d:\d\d<', dom)

    shot = tmp_path / "status.png"
    await chromium(tmp_path / "shot", f"--screenshot={shot}", url)
    data = shot.read_bytes()
    assert png_size(data) == WINDOW
    # A blank or unstyled page compresses to a few kilobytes; this one has charts and tables.
    assert len(data) > 40_000
    keep_artifact(data, "status-page.png")
