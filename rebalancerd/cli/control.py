"""Control commands talking to a running daemon over its unix socket:
`rebalancerd status [--json]`, `rebalancerd drain HOST`, `rebalancerd undrain HOST [--move-back]`,
`rebalancerd reload`. Only root or the configured control group may use them."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from rebalancerd.cli.style import GREEN, RED, YELLOW, paint, use_color


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--socket",
        default=None,
        help="daemon control socket (default $REBALANCERD_CONTROL_SOCKET or "
        "/run/rebalancerd/control.sock)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status",
        help="show the running daemon's hosts, plan, migrations and decisions",
        description="Hosts and their loads, the current plan, migrations in flight with "
        "progress, the last decisions with their reasons, and the policy in force.",
    )
    _common(p)
    p.add_argument("--decisions", type=int, default=5, help="decisions to show (default 5)")
    p.set_defaults(func=_status)

    p = subparsers.add_parser(
        "drain",
        help="put a host in maintenance: the daemon empties it by live migration",
        description="Mark HOST in maintenance in the running daemon and plan at once; its VMs "
        "are moved away under the policy's limits. Survives daemon restarts.",
    )
    p.add_argument("host")
    _common(p)
    p.set_defaults(func=_drain)

    p = subparsers.add_parser(
        "undrain",
        help="take a host out of maintenance",
        description="HOST receives VMs again. With --move-back the VMs that ran on it when it "
        "was drained are asked (soft pin, for an hour) to move back.",
    )
    p.add_argument("host")
    p.add_argument("--move-back", action="store_true", help="bring its former VMs back")
    _common(p)
    p.set_defaults(func=_undrain)

    p = subparsers.add_parser(
        "reload",
        help="reload the daemon's policies and config (like SIGHUP)",
    )
    _common(p)
    p.set_defaults(func=_reload)


def _call(args: argparse.Namespace, command: str, **kw: Any) -> dict[str, Any]:
    from rebalancerd.cli.main import CliError
    from rebalancerd.control.client import ControlError, request

    try:
        return request(args.socket, command, **kw)
    except ControlError as e:
        raise CliError(str(e)) from None


def _status(args: argparse.Namespace) -> int:
    st = _call(args, "status")
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        print_status(st, sys.stdout, args.decisions)
    return 0


def _drain(args: argparse.Namespace) -> int:
    r = _call(args, "drain", host=args.host)
    if args.json:
        print(json.dumps(r))
    elif r.get("already"):
        print(f"{r['host']} is already drained")
    else:
        n = len(r.get("vms", []))
        print(f"{r['host']} drained: {n} VMs to move away (watch `rebalancerd status`)")
    if r.get("warning") and not args.json:
        print(f"warning: {r['warning']}", file=sys.stderr)
    return 0


def _undrain(args: argparse.Namespace) -> int:
    r = _call(args, "undrain", host=args.host, move_back=args.move_back)
    if args.json:
        print(json.dumps(r))
    elif r.get("already"):
        print(f"{r['host']} was not drained")
    else:
        back = r.get("move_back", [])
        extra = f"; {len(back)} VMs asked to move back" if args.move_back else ""
        print(f"{r['host']} back in service{extra}")
    if r.get("warning") and not args.json:
        print(f"warning: {r['warning']}", file=sys.stderr)
    return 0


def _reload(args: argparse.Namespace) -> int:
    r = _call(args, "reload")
    if args.json:
        print(json.dumps(r))
    else:
        pol = r.get("policy") or {}
        print(pol.get("summary", "reloaded"))
        cfg = r.get("config")
        if cfg:
            if not cfg.get("ok"):
                print(f"config not reloaded: {cfg.get('error')}")
            elif cfg.get("needs_restart"):
                print(f"config: needs a restart for {', '.join(cfg['needs_restart'])}")
    return 0


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):5.1f}%"


_STATE_COLOR = {"active": GREEN, "standby": GREEN, "maintenance": YELLOW, "degraded": YELLOW}


def print_status(
    st: dict[str, Any], out: TextIO, decisions: int = 5, color: bool | None = None
) -> None:
    """The human view of `status`; colour only on a terminal without NO_COLOR (or `color`)."""
    c = use_color(out) if color is None else color
    d = st.get("daemon", {})
    pol = st.get("policy", {})
    tel = st.get("telemetry", {})
    w = out.write
    age = tel.get("data_age_s")
    w(
        f"rebalancerd {d.get('version')} pid {d.get('pid')}: {d.get('phase')}, "
        f"{paint('healthy', GREEN, c) if d.get('healthy') else paint('UNHEALTHY', RED, c)} "
        f"({d.get('health')}), "
        f"up {d.get('uptime_s', 0):.0f}s, {d.get('cycles')} cycles"
        f"{', DRY RUN' if d.get('dry_run') else ''}\n"
    )
    if not d.get("journal_writable"):
        bad = paint("JOURNAL NOT WRITABLE", RED, c)
        w(f"  {bad}: no migration will start ({d.get('journal_error') or ''})\n")
    w(f"  telemetry age: {'no data' if age is None else f'{age:.1f}s'}\n")
    lr = pol.get("last_reload") or {}
    w(
        f"policy: {pol.get('name')} mode={pol.get('mode')}"
        f"{' dry_run' if pol.get('dry_run') else ''}; {lr.get('summary', '')}\n"
    )
    w("\nhosts:\n")
    w(f"  {'HOST':<20} {'STATE':<12} {'VMS':>4} {'CPU':>7} {'MEM':>7}\n")
    for h in st.get("hosts", []):
        mark = " (drained)" if h.get("drained") else ""
        state = paint(f"{h['state']:<12}", _STATE_COLOR.get(h["state"], RED), c)
        w(
            f"  {h['name']:<20} {state} {h['vms']:>4} {_pct(h.get('cpu_load')):>7} "
            f"{_pct(h.get('memory_load')):>7}{mark}\n"
        )
    flights = st.get("in_flight", [])
    w(f"\nmigrations in flight: {len(flights)}\n")
    for f in flights:
        prog = f" {100 * f['progress']:.0f}%" if "progress" in f else ""
        w(
            f"  {f['vm']} {f['source']} -> {f['target']}{prog} "
            f"({f['elapsed_s']:.0f}s, {f.get('strategy') or '-'}) id {f['migration_id']}\n"
        )
    plan = st.get("plan")
    w("\ncurrent plan:" + (" none\n" if not plan else "\n"))
    if plan:
        stats = plan.get("stats", {})
        w(
            f"  {len(plan.get('migrations', []))} moves, status {stats.get('status')}, "
            f"imbalance {stats.get('imbalance_before')} -> {stats.get('imbalance_after')}\n"
        )
        for line in plan.get("explain", [])[:20]:
            w(f"  {line}\n")
    w("\nlast decisions:\n")
    for dec in st.get("decisions", [])[:decisions]:
        at = time.strftime("%H:%M:%S", time.gmtime(dec.get("at", 0)))
        w(f"  #{dec['cycle']} {at}Z {dec['status']}: {dec.get('detail', '')}\n")
        for line in dec.get("explain", [])[:10]:
            w(f"      {line}\n")
        ex = dec.get("execution") or {}
        for kind in ("succeeded", "failed", "aborted", "skipped"):
            for r in ex.get(kind, [])[:10]:
                w(f"      {kind}: {r['vm']} {r['source']} -> {r['target']} ({r['reason']})\n")
