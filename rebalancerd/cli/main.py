"""`rebalancerd` command line. Each subcommand lives in its own module under rebalancerd/cli/
and exposes ``register(subparsers) -> None``; the parser it adds sets ``func`` (sync or async,
taking the parsed args, returning an exit code).

Errors: a CliError (or any known input error) prints one line ``rebalancerd: error: ...`` and exits
2; anything unexpected prints one line and exits 1 (``--debug`` shows the traceback). A command
whose optional dependencies are not installed (the slim agent install has no solver) says which
extra to install. A reader that goes away (``rebalancerd status | head``) ends the command
quietly with 141, like a process killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from rebalancerd import __version__
from rebalancerd.cli.errors import CliError
from rebalancerd.policy.issues import PolicyError
from rebalancerd.snapshot import SnapshotError

# One module per command group; order is the order of `rebalancerd --help`.
COMMAND_MODULES = [
    "rebalancerd.cli.demo",
    "rebalancerd.cli.plan",
    "rebalancerd.cli.snapshot",
    "rebalancerd.cli.policy",
    "rebalancerd.cli.run",
    "rebalancerd.cli.agent",
    "rebalancerd.cli.control",
    "rebalancerd.cli.simulate",
    "rebalancerd.cli.docs",
]

# Modules of the optional extras, and the extra that brings each (pyproject.toml).
EXTRA_OF_MODULE = {
    "ortools": "offline",
    "numpy": "offline",
    "pandas": "offline",
    "libvirt": "agent",
}
SIGPIPE_EXIT = 141


# Bad input the user can fix: one line, exit code 2.
KNOWN_INPUT_ERRORS: tuple[type[BaseException], ...] = (CliError, SnapshotError, PolicyError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rebalancerd",
        description="Policy-driven live-migration balancer for libvirt/KVM fleets.",
    )
    parser.add_argument("--version", action="version", version=f"rebalancerd {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        result: Any = args.func(args)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return int(result or 0)
    except BrokenPipeError:
        _silence_stdout()
        return SIGPIPE_EXIT
    except ModuleNotFoundError as e:
        root = (e.name or "").split(".")[0]
        extra = EXTRA_OF_MODULE.get(root)
        if extra is None:
            raise
        if args.debug:
            traceback.print_exc()
        print(
            f"rebalancerd: error: `rebalancerd {args.command}` needs the Python module {root!r}, "
            f"which this install lacks: pip install 'rebalancerd[{extra}]' "
            "(or 'rebalancerd[daemon]' for everything)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("rebalancerd: interrupted", file=sys.stderr)
        return 130
    except KNOWN_INPUT_ERRORS as e:
        if args.debug:
            traceback.print_exc()
        for line in str(e).splitlines() or [""]:
            print(f"rebalancerd: error: {line}", file=sys.stderr)
        return 2
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        print(f"rebalancerd: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


async def _await(aw: Any) -> Any:
    return await aw


def run() -> None:
    sys.exit(main())


__all__ = ["CliError", "build_parser", "main"]

if __name__ == "__main__":
    run()
