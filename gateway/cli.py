"""The command line: ``exact-gateway serve | sandbox | check``.

Each flag is a shortcut for an ``EXACT_GATEWAY_*`` variable (named in ``--help``); a flag wins
over the variable. Configuration errors end the command with exit code 2 and one line that
names the variable, before anything starts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.errors import ConfigError
from gateway.lifecycle import run
from gateway.logs import configure_logging
from gateway.settings import (
    ENV_PREFIX,
    Environment,
    LogFormat,
    LogLevel,
    Settings,
    load_sandbox_settings,
    load_settings,
)

CONFIG_EXIT = 2


def _gateway_flags(parser: argparse.ArgumentParser, *, listeners: bool) -> None:
    choices = [env.value for env in Environment]
    parser.add_argument(
        "--environment",
        choices=choices,
        help=f"EXACT environment ({ENV_PREFIX}ENVIRONMENT; required)",
    )
    if listeners:
        parser.add_argument("--host", help=f"proxy listen address ({ENV_PREFIX}HOST; 127.0.0.1)")
        parser.add_argument("--port", type=int, help=f"proxy port ({ENV_PREFIX}PORT; 8480)")
        parser.add_argument(
            "--admin-host", help=f"admin listen address ({ENV_PREFIX}ADMIN_HOST; 0.0.0.0)"
        )
        parser.add_argument(
            "--admin-port", type=int, help=f"admin port ({ENV_PREFIX}ADMIN_PORT; 8481)"
        )
    parser.add_argument(
        "--log-level",
        choices=[level.value for level in LogLevel],
        help=f"({ENV_PREFIX}LOG_LEVEL; info)",
    )
    parser.add_argument(
        "--log-format",
        choices=[fmt.value for fmt in LogFormat],
        help=f"({ENV_PREFIX}LOG_FORMAT; json)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exact-gateway",
        description="Resilient reverse-proxy sidecar for the EXACT dental practice API. Every"
        f" setting is an environment variable prefixed {ENV_PREFIX} (see README); flags win.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the proxy and admin listeners",
        description="Run the proxy (default 127.0.0.1:8480) and admin (0.0.0.0:8481)"
        " listeners. With --environment sandbox and no API_URL, the simulated EXACT API runs"
        " in-process with demo credentials.",
    )
    _gateway_flags(serve, listeners=True)

    sandbox = commands.add_parser(
        "sandbox",
        help="run only the simulated EXACT API and identity server",
        description="Run the EXACT simulator (API, identity server, fault control at"
        " /_sandbox) for tests, demos and benchmarks.",
    )
    sandbox.add_argument("--host", help=f"listen address ({ENV_PREFIX}SANDBOX_HOST; 127.0.0.1)")
    sandbox.add_argument("--port", type=int, help=f"port ({ENV_PREFIX}SANDBOX_PORT; 8482)")
    sandbox.add_argument(
        "--token-lifetime",
        type=int,
        help=f"seconds tokens live ({ENV_PREFIX}SANDBOX_TOKEN_LIFETIME_SECONDS; 3600)",
    )

    check = commands.add_parser(
        "check",
        help="validate configuration, obtain a token, call ListActiveSubscriptions",
        description="Print a short report. Exit 0 when everything works, 2 for a"
        " configuration problem (including refused credentials or scopes), 1 when something"
        " could not be reached.",
    )
    _gateway_flags(check, listeners=False)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        environment=args.environment,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        admin_host=getattr(args, "admin_host", None),
        admin_port=getattr(args, "admin_port", None),
        log_level=args.log_level,
        log_format=args.log_format,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "sandbox":
            return _run_sandbox(args)
        settings = _settings(args)
    except ConfigError as exc:
        print(f"exact-gateway: {exc}", file=sys.stderr)
        return CONFIG_EXIT
    if args.command == "check":
        from gateway.check import run_check  # noqa: PLC0415 - only this command needs it

        # The report says everything a person needs; log lines would only interleave with
        # it. --log-level debug brings them back, as text.
        quiet = settings.log_level is not LogLevel.DEBUG
        configure_logging(LogLevel.ERROR if quiet else LogLevel.DEBUG, LogFormat.TEXT)
        if quiet:
            logging.disable(logging.CRITICAL)
        return asyncio.run(run_check(settings, print))
    configure_logging(settings.log_level, settings.log_format)
    from gateway.app import serve  # noqa: PLC0415

    try:
        run(serve(settings), settings.event_loop.value)
    except ConfigError as exc:
        print(f"exact-gateway: {exc}", file=sys.stderr)
        return CONFIG_EXIT
    except OSError as exc:
        print(f"exact-gateway: cannot listen: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def _run_sandbox(args: argparse.Namespace) -> int:
    sandbox_settings = load_sandbox_settings(
        host=args.host, port=args.port, token_lifetime_seconds=args.token_lifetime
    )
    configure_logging(LogLevel.INFO, LogFormat.TEXT)
    from gateway.sandbox_mode import run_sandbox  # noqa: PLC0415

    asyncio.run(run_sandbox(sandbox_settings))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
