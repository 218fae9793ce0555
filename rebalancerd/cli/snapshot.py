"""`rebalancerd snapshot`: dump the live model of a running daemon, check a snapshot file, print
the snapshot JSON Schema, or generate a synthetic snapshot for trying policies offline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rebalancerd import snapshot as codec
from rebalancerd.cli.errors import CliError
from rebalancerd.domain.model import ClusterSnapshot
from rebalancerd.files import load_snapshot
from rebalancerd.policy.measure import measure
from rebalancerd.policy.schema import Policy, default_policy

DEFAULT_SOCKET = "/run/rebalancerd/control.sock"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "snapshot",
        help="dump the live cluster model, or check/generate snapshot files",
        description=__doc__,
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", metavar="FILE", help="validate a snapshot file and summarise it")
    g.add_argument("--schema", action="store_true", help="print the snapshot JSON Schema")
    g.add_argument(
        "--generate", action="store_true", help="write a seeded synthetic (skewed) snapshot"
    )
    p.add_argument("--socket", default=None, help=f"daemon control socket ({DEFAULT_SOCKET})")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("--hosts", type=int, default=16, help="with --generate")
    p.add_argument("--vms", type=int, default=160, help="with --generate")
    p.add_argument("--seed", type=int, default=0, help="with --generate")
    p.add_argument(
        "--policy",
        metavar="FILE",
        help="with --check: measure imbalance under this policy, as `plan --policy` does "
        "(default: the built-in default policy, as `plan` without --policy)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def summary(s: ClusterSnapshot, policy: Policy | None = None) -> dict[str, Any]:
    """Counts and imbalance of a snapshot; imbalance measured as `plan` does under `policy`."""
    m = measure(s, policy or default_policy(), s.taken_at or 0.0)
    return {
        "hosts": len(s.hosts),
        "vms": len(s.vms),
        "imbalance": round(m.imbalance, 4),
        "cpu_gap": round(m.cpu_gap, 4),
        "memory_gap": round(m.memory_gap, 4),
        "imbalance_basis": m.basis,
        "rules": {
            "groups": len(s.rules.groups),
            "pins": len(s.rules.pins),
            "exclusions": len(s.rules.exclusions),
        },
        "hosts_by_state": {
            st: sum(1 for h in s.hosts if h.state.value == st)
            for st in sorted({h.state.value for h in s.hosts})
        },
    }


def _emit(text: str, output: str | None) -> None:
    if output:
        try:
            Path(output).write_text(text + "\n")
        except OSError as e:
            raise CliError(f"cannot write {output}: {e.strerror}") from None
    else:
        print(text)


def run(args: argparse.Namespace) -> int:
    if args.schema:
        _emit(json.dumps(codec.json_schema(), indent=2, sort_keys=True), args.output)
        return 0
    if args.check:
        s = load_snapshot(args.check)
        policy = None
        if args.policy:
            from rebalancerd.adapters.policy_files import load_policy_file

            policy = load_policy_file(args.policy)
        info = summary(s, policy)
        if args.json:
            print(json.dumps({"file": args.check, "ok": True} | info, sort_keys=True))
        else:
            print(
                f"{args.check}: ok, {info['hosts']} hosts, {info['vms']} VMs, "
                f"imbalance {info['imbalance']:.3f} (cpu gap {info['cpu_gap']:.3f}, "
                f"memory gap {info['memory_gap']:.3f}; {info['imbalance_basis']})"
            )
        return 0
    if args.generate:
        if not 1 <= args.hosts <= 100_000 or not 0 <= args.vms <= 2_000_000:
            raise CliError("--hosts must be 1..100000 and --vms 0..2000000")
        from rebalancerd.sim.synthetic import skewed_snapshot

        _emit(codec.dumps(skewed_snapshot(args.hosts, args.vms, args.seed)), args.output)
        return 0
    return _live(args)


def fetch_live(socket: str | None) -> ClusterSnapshot:
    """The running daemon's cluster model, through its control socket (CliError if not)."""
    try:
        from rebalancerd.control.client import request
    except ImportError:  # pragma: no cover - the control API ships with the daemon
        raise CliError("this build has no control API client") from None
    sock = socket or DEFAULT_SOCKET
    try:
        reply = request(sock, "snapshot")
    except OSError as e:
        raise CliError(f"cannot reach the daemon at {sock}: {e.strerror or e}") from None
    doc = reply.get("snapshot", reply)
    # Validate what the daemon sent with the same codec every offline command uses.
    return codec.loads(json.dumps(doc), f"daemon at {sock}")


def _live(args: argparse.Namespace) -> int:
    _emit(codec.dumps(fetch_live(args.socket)), args.output)
    return 0
