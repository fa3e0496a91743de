"""The README's sandbox control example works as written: the same commands, in order, against
a started `exact-gateway sandbox` process and a gateway pointed at it.

The only change to the commands is the port numbers: the test runs on free ports (other tests
run at the same time) after checking that the README's ports are the real defaults: 8482 for
`exact-gateway sandbox`, 8480 for the gateway's proxy.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from gateway.settings import SandboxServerSettings, Settings
from tests.audit import AUDIT
from tests.fakes import spawn_gateway, wait_until

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def sandbox_block() -> list[str]:
    section = README[README.index("## The sandbox\n") :]
    section = section[: section.find("\n## ", 1)]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "one command block in the sandbox section"
    return [line for line in blocks[0].splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def parse_curl(line: str) -> tuple[str, str, str | None]:
    """(method, URL, body) of a documented `curl` line; comments dropped."""
    words = shlex.split(line, comments=True)
    assert words[0] == "curl", line
    method, body, url = "GET", None, None
    args = iter(words[1:])
    for word in args:
        if word == "-X":
            method = next(args)
        elif word == "-d":
            body = next(args)
            method = method if method != "GET" else "POST"
        elif word in {"-s", "-i"}:
            continue
        else:
            url = word
    assert url is not None, line
    return method, url, body


async def test_documented_sandbox_commands_work() -> None:
    """Each documented request reaches the process its port names and succeeds: the PUT turns
    UKTEST2 offline, the gateway then answers 503 for it, the request log shows the attempts,
    and reset puts it back."""
    lines = sandbox_block()
    assert lines[0].split("#")[0].split() == ["exact-gateway", "sandbox", "&"]
    serve = shlex.split(lines[1], comments=True)
    assert serve == [
        "EXACT_GATEWAY_API_URL=http://127.0.0.1:8482",
        "exact-gateway",
        "serve",
        "--environment",
        "sandbox",
        "&",
    ]
    documented = {
        "sandbox": SandboxServerSettings.model_fields["port"].default,
        "proxy": Settings.model_fields["port"].default,
    }
    assert documented == {"sandbox": 8482, "proxy": 8480}

    sandbox_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXACT_GATEWAY_")}
    sandbox = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "sandbox",
        "--port",
        str(sandbox_port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    gateway = None
    try:
        async with aiohttp.ClientSession() as client:

            async def sandbox_up() -> bool:
                try:
                    url = f"http://127.0.0.1:{sandbox_port}/_sandbox/practices"
                    async with client.get(url) as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until(sandbox_up, 30)
            gateway = await spawn_gateway(
                {"EXACT_GATEWAY_API_URL": f"http://127.0.0.1:{sandbox_port}"},
                "--environment",
                "sandbox",
            )
            ports = {"8482": sandbox_port, "8480": gateway.proxy_port}
            answers = []
            for line in lines[2:]:
                method, url, body = parse_curl(line)
                port = re.match(r"localhost:(\d+)/", url)
                assert port is not None, url
                target = f"http://localhost:{ports[port.group(1)]}/{url.split('/', 1)[1]}"
                # curl -d sends application/x-www-form-urlencoded, as the README's line does.
                headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
                async with client.request(method, target, data=body, headers=headers) as resp:
                    text = await resp.text()
                    AUDIT.log_lines.append(text[:200])
                    answers.append((url, resp.status, text))
        put, details, requests, reset = answers
        assert put[1] == 200, put
        assert json.loads(put[2])["behaviour"] == "offline"
        assert details[1] == 503, details
        assert requests[1] == 200
        assert json.loads(requests[2])["attempts"] >= 1
        assert reset[1] == 200, reset
    finally:
        if gateway is not None:
            gateway.process.send_signal(signal.SIGTERM)
            assert await gateway.wait() == 0
        sandbox.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(sandbox.wait(), 30) == 0
