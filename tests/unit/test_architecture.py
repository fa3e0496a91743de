"""The layout's rules, read from the code with ``ast``: the pure core never reaches the
aiohttp layer or the settings, and the sandbox depends on nothing of the gateway's but the
EXACT facts. A rule broken here is a design decision to make in review, not by accident."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gateway

ROOT = Path(gateway.__file__).parent
# The pure core: plain Python with an injected clock, tested without sockets.
CORE = (
    "gateway.resilience",  # the package: breaker, retry, backoff, budget, bulkhead, rules
    "gateway.routes",
    "gateway.exact_api",
    "gateway.tokens",  # the package: schedule (pure values) and source (state, loop)
    "gateway.credentials",
    "gateway.idempotency",
    "gateway.errors",
    "gateway.outcome",  # one attempt's Outcome and the retry/skip reasons
    "gateway.clock",
    "gateway.policies",
    "gateway.ledger",
    "gateway.pauses",
    "gateway.practices.versions",
    "gateway.practices.subscriptions",
    "gateway.header_policy",
    "gateway.admin_access",
    "gateway.status_page",  # the package: the /status document, the HTML, its assets
)
FORBIDDEN_IN_CORE = ("aiohttp", "gateway.settings")


def module_files(name: str) -> list[Path]:
    """The source files of a module or of every module in a package."""
    path = ROOT.parent.joinpath(*name.split("."))
    if path.is_dir():
        return sorted(path.rglob("*.py"))
    return [path.with_suffix(".py")]


def imported_files(name: str) -> list[Path]:
    """What importing ``name`` runs: a module's file, or a package's ``__init__``."""
    path = ROOT.parent.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return [candidate]
    return []  # a name imported from a module (a class, a function), not a module


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (a late import counts too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def reachable(start: str) -> dict[str, str]:
    """Modules reachable from ``start`` through imports inside the gateway package, each
    with the module that imports it (so a failure can say by which path)."""
    seen: dict[str, str] = {}
    todo = [(file, module_name(file)) for file in module_files(start)]
    while todo:
        file, name = todo.pop()
        for imported in imports_of(file):
            if imported in seen:
                continue
            seen[imported] = name
            if imported.startswith("gateway"):
                todo.extend((f, module_name(f)) for f in imported_files(imported))
    return seen


@pytest.mark.parametrize("core", CORE)
def test_the_core_imports_neither_aiohttp_nor_the_settings(core: str) -> None:
    """A core module, and everything of ours it imports, stays clear of aiohttp and the
    settings module (settings are turned into frozen policies at the composition root)."""
    for imported, importer in reachable(core).items():
        assert not imported.startswith(FORBIDDEN_IN_CORE), (
            f"{core} reaches {imported} (imported by {importer})"
        )


def test_the_sandbox_imports_nothing_of_the_gateway_but_the_exact_facts() -> None:
    """Every ``gateway.*`` import under gateway/sandbox is the sandbox itself or exact_api."""
    for file in module_files("gateway.sandbox"):
        for imported in imports_of(file):
            if imported.startswith("gateway"):
                assert imported.startswith(("gateway.sandbox", "gateway.exact_api")), (
                    f"{module_name(file)} imports {imported}"
                )


def test_the_facts_module_depends_on_the_standard_library_only() -> None:
    """The sandbox may import it, so it must import nothing of ours or anyone else's."""
    assert imports_of(module_files("gateway.exact_api")[0]) <= {
        "__future__",
        "__future__.annotations",
        "re",
        "dataclasses",
        "dataclasses.dataclass",
        "dataclasses.field",
    }


def reads_the_environment(path: Path) -> bool:
    """Does a file read the process environment (``os.environ``, ``os.getenv``, ``environ``
    imported from ``os``)?"""
    readers = {"environ", "environb", "getenv", "getenvb"}
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in readers
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            return True
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in readers for alias in node.names)
        ):
            return True
    return False


def test_only_the_settings_package_reads_the_environment() -> None:
    """Settings are parsed once: no module outside gateway/settings reads os.environ, so a
    variable cannot bypass validation or the one error message that names it."""
    readers = {module_name(file) for file in module_files("gateway") if reads_the_environment(file)}
    assert readers
    assert all(reader.startswith("gateway.settings") for reader in readers), readers


def test_the_environment_rule_catches_a_reader(tmp_path: Path) -> None:
    """The reader sees the environment read however it is written (so the rule can fail)."""
    for source in (
        "import os\nos.environ.get('X')\n",
        "import os\nos.getenv('X')\n",
        "from os import environ\n",
        "def f():\n import os\n return os.environ['X']\n",
    ):
        file = tmp_path / "m.py"
        file.write_text(source)
        assert reads_the_environment(file), source
    (tmp_path / "m.py").write_text("environ = {}\nenviron.get('X')\n")
    assert not reads_the_environment(tmp_path / "m.py")


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    """The reader sees an aiohttp import however it is written (so the rule can fail)."""
    for source in ("import aiohttp\n", "from aiohttp import web\n", "def f():\n import aiohttp\n"):
        file = tmp_path / "m.py"
        file.write_text(source)
        assert any(name.startswith("aiohttp") for name in imports_of(file))


def test_only_the_tracing_sdk_room_imports_opentelemetry() -> None:
    """The SDK is an optional extra: one module imports it, and only start_tracing imports
    that module (lazily), so a gateway without the extra, or with tracing off, never loads it."""
    importers = {
        module_name(file)
        for file in module_files("gateway")
        if any(name.startswith("opentelemetry") for name in imports_of(file))
    }
    assert importers == {"gateway.tracing.sdk"}
    users = {
        module_name(file)
        for file in module_files("gateway")
        if "gateway.tracing.sdk" in imports_of(file)
    }
    assert users == {"gateway.tracing"}
