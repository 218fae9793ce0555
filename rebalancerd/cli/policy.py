"""Policy commands.

- ``rebalancerd validate FILE|DIR...``: every problem as ``file:line:column: message``; exit 1
  if there is any. A directory is checked as the set the daemon would load (files together).
- ``rebalancerd policy diff --old P --new P --snapshot FILE | --live [--socket S]``: plan the
  snapshot (or the running daemon's cluster model) under both policies (P = a file or a
  directory) and show the moves added, removed and changed, and the scores.
- ``rebalancerd policy show P [--at TIME]``: the effective policy of a file or directory at a
  wall time (default now; scheduled policies count only inside their schedule).
- ``rebalancerd policy schema``: the JSON Schema of policy files (``--markdown``: the field
  reference of docs/policies.md; ``--check FILE``: exit 1 if FILE is out of date).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rebalancerd.adapters.policy_files import load_policy_path, parse_policy_dir, parse_policy_file
from rebalancerd.cli.errors import CliError, checked_seed
from rebalancerd.files import InputFileError, read_bounded_text
from rebalancerd.policy.issues import PolicyError, PolicyIssue
from rebalancerd.policy.reference import reference_markdown
from rebalancerd.policy.schema import Policy, policy_json_schema_text
from rebalancerd.policy.whatif import diff_plans


def register(sub: Any) -> None:
    v: argparse.ArgumentParser = sub.add_parser(
        "validate",
        help="check policy files; print file:line:column: message per problem",
        description="Check policy files (or directories, as one set). Exit 1 on any problem.",
    )
    v.add_argument("paths", nargs="+", metavar="FILE", help="policy file or directory")
    v.add_argument("--json", action="store_true", help="print a JSON list of problems")
    v.set_defaults(func=cmd_validate)

    p: argparse.ArgumentParser = sub.add_parser(
        "policy",
        help="policy what-if, effective policy, JSON schema",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ps = p.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")

    d = ps.add_parser("diff", help="plan a snapshot under two policies and compare")
    d.add_argument("--old", required=True, metavar="DIR|FILE", help="current policy")
    d.add_argument("--new", required=True, metavar="DIR|FILE", help="edited policy")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--snapshot", metavar="FILE", help="cluster snapshot (JSON)")
    src.add_argument(
        "--live", action="store_true", help="the running daemon's cluster model (control socket)"
    )
    d.add_argument("--socket", default=None, help="daemon control socket, with --live")
    d.add_argument(
        "--now",
        metavar="TIME",
        help="wall time for maintenance schedules: ISO 8601 or epoch seconds "
        "(default: the snapshot's taken_at, else now)",
    )
    d.add_argument("--time-limit", type=float, default=5.0, help="planner seconds per plan")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", action="store_true", help="print the diff as JSON")
    d.set_defaults(func=cmd_diff)

    s = ps.add_parser("show", help="the effective policy of a file or directory")
    s.add_argument("path", metavar="DIR|FILE")
    s.add_argument(
        "--at",
        metavar="TIME",
        help="the policy in force at this wall time (scheduled policies): ISO 8601 or epoch "
        "seconds (default: now)",
    )
    s.add_argument("--json", action="store_true", help="print JSON (the default is YAML-ish)")
    s.set_defaults(func=cmd_show)

    sc = ps.add_parser("schema", help="print the JSON Schema of policy files")
    sc.add_argument("--markdown", action="store_true", help="the field reference instead")
    sc.add_argument("--check", metavar="FILE", help="exit 1 if FILE differs from the output")
    sc.add_argument("--json", action="store_true", help="JSON output (the default for the schema)")
    sc.set_defaults(func=cmd_schema)

    p.set_defaults(func=lambda a: _help(p))


def _help(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


# -- validate ------------------------------------------------------------------------------------


def validate_paths(paths: list[str]) -> tuple[list[PolicyIssue], int]:
    """All problems of the given files/directories, and how many files were read."""
    problems: list[PolicyIssue] = []
    files = 0
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            parsed, probs = parse_policy_dir(path)
            files += len(parsed)
            problems += probs
        else:
            files += 1
            problems += parse_policy_file(path).problems
    return problems, files


def cmd_validate(args: argparse.Namespace) -> int:
    problems, files = validate_paths(args.paths)
    if args.json:
        print(json.dumps([p.to_dict() for p in problems], indent=2, ensure_ascii=False))
    else:
        for p in problems:
            print(p)
        if not problems:
            print(f"{files} policy file(s) OK", file=sys.stderr)
        else:
            print(f"{len(problems)} problem(s) in {files} file(s)", file=sys.stderr)
    return 1 if problems else 0


# -- diff ----------------------------------------------------------------------------------------


def _policy(path: str, now: float | None = None) -> Policy:
    """The effective policy of a file or directory at wall time `now` (None: schedules
    ignored)."""
    try:
        return load_policy_path(path).effective(now)
    except PolicyError as e:
        raise CliError(f"invalid policy: {e.one_line()}") from None
    except OSError as e:
        raise CliError(f"{path}: {e.strerror or e}") from None


def _now(arg: str | None, taken_at: float | None, flag: str = "--now") -> float:
    if arg is None:
        return taken_at if taken_at is not None else time.time()
    try:
        t = float(arg)
    except ValueError:
        pass
    else:
        if not 0 <= t < 253402300800:  # also refuses nan and inf: year 9999 at most
            raise CliError(f"{flag} {arg!r}: epoch seconds out of range")
        return t
    try:
        dt = datetime.fromisoformat(arg)
    except ValueError:
        raise CliError(f"{flag} {arg!r}: not ISO 8601 nor epoch seconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def cmd_diff(args: argparse.Namespace) -> int:
    from rebalancerd.files import load_snapshot
    from rebalancerd.planner import make_plan

    seed = checked_seed(args.seed)
    if args.live:
        from rebalancerd.cli.snapshot import fetch_live

        snap = fetch_live(args.socket)
    else:
        snap = load_snapshot(args.snapshot)
    if args.time_limit <= 0:
        raise CliError("--time-limit must be > 0")
    now = _now(args.now, snap.taken_at)
    old, new = _policy(args.old, now), _policy(args.new, now)
    kw: dict[str, Any] = {"now": now, "time_limit_s": args.time_limit, "seed": seed}
    plan_old = make_plan(snap, old, **kw)
    plan_new = make_plan(snap, new, **kw)
    d = diff_plans(plan_old, plan_new)
    if args.json:
        print(json.dumps(d.to_dict() | {"now": now}, indent=2, ensure_ascii=False))
    else:
        print(
            f"{'live cluster' if args.live else 'snapshot ' + args.snapshot}: "
            f"{len(snap.hosts)} hosts, {len(snap.vms)} VMs; "
            f"old {old.name!r} ({old.mode.value}) vs new {new.name!r} ({new.mode.value})"
        )
        for line in d.lines():
            print(line)
    return 0


# -- show / schema -------------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    now = _now(args.at, None, "--at")
    pol = _policy(args.path, now)
    data = pol.model_dump(mode="json")
    if args.json:
        data = {"at": now} | data
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), end="")
    return 0


MAX_SCHEMA_FILE_BYTES = 16 * 1024 * 1024
"""Largest file `policy schema --check` reads (the schema and docs/policies.md are far smaller)."""


def cmd_schema(args: argparse.Namespace) -> int:
    text = reference_markdown() if args.markdown else policy_json_schema_text()
    if args.check:
        try:
            current = read_bounded_text(args.check, MAX_SCHEMA_FILE_BYTES, regular_only=True)
        except InputFileError as e:
            raise CliError(str(e)) from None
        ok = text in current if args.markdown else current == text
        if not ok:
            print(f"{args.check} is out of date: regenerate with `rebalancerd policy schema`")
            return 1
        return 0
    sys.stdout.write(text)
    return 0
