"""`rebalancerd completion SHELL` and `rebalancerd manpage`: shell completion and a man page,
both generated from the argument parser itself, so they never drift from the commands (the
Debian package ships what these print)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from rebalancerd import __version__

SHELLS = ("bash", "zsh", "tcsh")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh, tcsh)",
        description="Print the completion script for SHELL, generated from this parser. "
        "bash: rebalancerd completion bash > /etc/bash_completion.d/rebalancerd; "
        "zsh: rebalancerd completion zsh > ~/.zfunc/_rebalancerd.",
    )
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(func=_completion)
    m: argparse.ArgumentParser = sub.add_parser(
        "manpage",
        help="print the rebalancerd(1) man page (roff)",
        description="Print the man page generated from this parser: rebalancerd manpage | man -l -",
    )
    m.set_defaults(func=_manpage)


def _root() -> argparse.ArgumentParser:
    from rebalancerd.cli.main import build_parser

    return build_parser()


def _completion(args: argparse.Namespace) -> int:
    import shtab

    sys.stdout.write(shtab.complete(_root(), shell=args.shell))
    return 0


def _manpage(_args: argparse.Namespace) -> int:
    sys.stdout.write(manpage(_root()))
    return 0


def _esc(text: str) -> str:
    """`text` safe for roff: backslashes doubled, a leading dot or quote neutralised."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + ln) if ln.startswith((".", "'")) else ln for ln in out.splitlines())


def _subparsers(p: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand of `p`, in --help order."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sp in action.choices.items():
                yield name, helps.get(name, ""), sp


def _options(p: argparse.ArgumentParser) -> list[str]:
    lines: list[str] = []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction | argparse._HelpAction):
            continue
        value = (
            "{" + ",".join(map(str, a.choices)) + "}"
            if a.choices
            else str(a.metavar or (a.dest.upper() if a.option_strings else a.dest))
        )
        if a.option_strings:
            flags = ", ".join(a.option_strings) + ("" if a.nargs == 0 else " " + value)
        else:
            flags = value
        lines += [".TP", f"\\fB{_esc(flags)}\\fR", _esc(a.help or "")]
    return lines


def _commands(p: argparse.ArgumentParser, prefix: str) -> list[str]:
    lines: list[str] = []
    for name, help_, sp in _subparsers(p):
        full = f"{prefix} {name}".strip()
        usage = sp.format_usage().removeprefix("usage: ").strip()
        lines += [".SS " + _esc(full), f"\\fB{_esc(' '.join(usage.split()))}\\fR", ".PP"]
        desc = sp.description or help_
        if desc:
            lines += [_esc(" ".join(desc.split())), ".PP"]
        lines += _options(sp)
        lines += _commands(sp, full)
    return lines


def manpage(parser: argparse.ArgumentParser, date: datetime | None = None) -> str:
    """rebalancerd(1) in roff (man macros), from `parser`."""
    day = (date or datetime.now(UTC)).strftime("%Y-%m-%d")
    lines = [
        f'.TH REBALANCERD 1 "{day}" "rebalancerd {__version__}" "User Commands"',
        ".SH NAME",
        "rebalancerd \\- " + _esc(parser.description or ""),
        ".SH SYNOPSIS",
        "\\fBrebalancerd\\fR [\\fB\\-\\-debug\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        "rebalancerd keeps a fleet of libvirt/KVM hypervisors balanced by live migration, "
        "under YAML policies. \\fBrebalancerd run\\fR is the daemon (one per cluster), "
        "\\fBrebalancerd agent\\fR the telemetry agent (one per hypervisor); the other commands "
        "plan, check and simulate offline or talk to the running daemon.",
        ".SH OPTIONS",
        *_options(parser),
        ".SH COMMANDS",
        *_commands(parser, ""),
        ".SH EXIT STATUS",
        "0 on success; 1 if policy files have problems (\\fBvalidate\\fR) or on an unexpected "
        "error; 2 on bad input (one line \\fBrebalancerd: error: ...\\fR, never a traceback); "
        "141 when the reader of the output went away (SIGPIPE).",
        ".SH ENVIRONMENT",
        ".TP",
        "\\fBNO_COLOR\\fR",
        "If set (to anything), no colour in terminal output or console logs. Without it, "
        "colour is used only on a terminal (and not when \\fBTERM\\fR=dumb).",
        ".TP",
        "\\fBREBALANCERD_CONTROL_SOCKET\\fR",
        "The daemon's control socket for \\fBstatus\\fR, \\fBdrain\\fR, \\fBundrain\\fR, "
        "\\fBreload\\fR (default /run/rebalancerd/control.sock).",
        ".SH FILES",
        ".TP",
        "/etc/rebalancerd/rebalancerd.yaml",
        "daemon configuration",
        ".TP",
        "/etc/rebalancerd/agent.yaml",
        "agent configuration (each hypervisor)",
        ".TP",
        "/etc/rebalancerd/policies/",
        "policy files",
        ".TP",
        "/var/lib/rebalancerd/",
        "state: migration journal, drained hosts",
        ".SH SEE ALSO",
        "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \\fBvirsh\\fR(1); "
        "/usr/share/doc/rebalancerd/",
    ]
    return "\n".join(lines) + "\n"
