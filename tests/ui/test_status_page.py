"""The admin status page in a real headless browser (Debian chromium), not just over HTTP."""

from __future__ import annotations

import asyncio
import shutil
import struct
from pathlib import Path

import aiohttp

from gateway.sandbox import DEMO_CLIENT_SECRET
from tests.fakes import (
    SandboxFactory,
    SandboxGatewayFactory,
    admin_url,
    control,
    proxy_url,
)

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
    "--window-size=1200,800",
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


async def test_status_page_renders_live_state_in_a_browser(
    make_sandbox: SandboxFactory, start_on_sandbox: SandboxGatewayFactory, tmp_path: Path
) -> None:
    """Chromium loads / (under its strict CSP), the script fetches /status and shows the
    version, readiness, token and the open breaker; a screenshot is taken and checked."""
    sandbox = await make_sandbox()
    await control(sandbox, "PUT", "/practices/UKOFFLINE1", {"behaviour": "offline"})
    gateway = await start_on_sandbox(
        sandbox, retry_backoff_base_seconds=0.01, retry_backoff_max_seconds=0.02
    )
    async with aiohttp.ClientSession() as client:
        await asyncio.wait_for(gateway.tokens.ready_event.wait(), 10)
        for _ in range(2):
            async with client.get(proxy_url(gateway, "/v1/Practices/UKOFFLINE1/details")) as r:
                await r.read()
        async with client.get(admin_url(gateway, "/")) as resp:
            assert resp.status == 200
            assert "script-src 'sha256-" in resp.headers["Content-Security-Policy"]
            page = await resp.text()
        async with client.get(admin_url(gateway, "/status")) as resp:
            status_text = await resp.text()
    for text in (page, status_text):
        assert DEMO_CLIENT_SECRET not in text
        assert "eyJ" not in text  # no JWT
    assert "http" not in page.split("<script>")[0].lower().replace("http-equiv", "")

    url = admin_url(gateway, "/")
    dom = (await chromium(tmp_path / "dom", "--dump-dom", url)).decode()
    assert "v0.1.0" in dom
    assert 'id="ready" class="ok">ready<' in dom
    assert "UKOFFLINE1" in dom
    assert ">open<" in dom
    assert "valid," in dom  # the token card, filled in by the script under the CSP

    shot = tmp_path / "status.png"
    await chromium(tmp_path / "shot", f"--screenshot={shot}", url)
    data = shot.read_bytes()
    assert png_size(data) == (1200, 800)
    # A blank or unstyled page compresses to a few kilobytes; this one has cards and text.
    assert len(data) > 15_000
    keep = Path(__file__).resolve().parents[2] / ".pytest-artifacts"
    keep.mkdir(exist_ok=True)
    (keep / "status-page.png").write_bytes(data)
