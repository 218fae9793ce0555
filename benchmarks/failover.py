"""Leader failover and shard rebalancing on a real 3-member etcd (loopback ports, tmpfs).

    .venv/bin/python benchmarks/failover.py [--kills 20] [--ttl 5] [--clusters 100]
        [--daemons 5] [--rounds 3]

- **Failover**: a leader runs in its own process (``EtcdCoordinator`` for one cluster) and
  prints each keepalive etcd confirms; a standby runs in this process. Each round kills the
  leader (even rounds ``kill -9``; odd rounds SIGSTOP, then SIGCONT once the standby leads) and
  measures *last confirmed keepalive -> standby leads*. The floor is the lease TTL (etcd expires
  a lease TTL after its last keepalive); the ratio to it is printed. The stopped leader, once
  continued, keeps trying fenced writes: every one must be refused (``stale_writes`` = writes
  that landed with the old term after the new one began; target 0).
- **Shards**: ``--clusters`` clusters over ``--daemons`` coordinators in this process; one
  daemon dies without resigning; time until every cluster has exactly one leader again, and how
  many clusters moved (rendezvous hashing moves only the dead daemon's share).

Measures the coordinator, not the daemon's first plan (a plan follows within one planning
interval of taking the lead). The last line is one JSON object of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rebalancerd.adapters.etcd_coordinator import EtcdCoordinator  # noqa: E402
from rebalancerd.coordination.settings import CoordinationSettings  # noqa: E402
from rebalancerd.domain.shards import owner  # noqa: E402
from tests.fixtures.etcd import EtcdCluster  # noqa: E402

LEADER = """
import asyncio, sys, time
from rebalancerd.adapters.etcd_coordinator import EtcdCoordinator, FencedWriteRejected
from rebalancerd.coordination.settings import CoordinationSettings
s = CoordinationSettings.model_validate_json(sys.argv[1])
async def main():
    async with EtcdCoordinator(s, ["c"]) as c:
        loop = asyncio.create_task(c.run())
        renew = c.renew
        async def renew_and_say(timeout=None):
            await renew(timeout)
            if c.leadership("c"):
                print("KA", time.time(), flush=True)
        c.renew = renew_and_say
        n = 0
        while True:
            if c.leadership("c"):
                n += 1
                try:
                    term = str(c.leadership("c").term)
                    await c.fenced_write("c", {f"w/{s.member}/{n:06d}": term})
                except Exception:  # FencedWriteRejected, or etcd busy: try again
                    pass
            await asyncio.sleep(0.05)
asyncio.run(main())
"""


def settings(etcd: EtcdCluster, prefix: str, member: str, ttl: int) -> CoordinationSettings:
    return CoordinationSettings(
        backend="etcd",
        endpoints=etcd.endpoints,
        member=member,
        prefix=prefix,
        lease_ttl_s=ttl,
        safety_margin_s=min(1.0, ttl / 4),
        poll_s=0.1,
    )


def pct(values: list[float], p: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, max(0, round(p / 100 * len(data) + 0.5) - 1))]


async def failover_round(etcd: EtcdCluster, i: int, ttl: int, stop: bool) -> dict[str, Any]:
    prefix = f"/bench/failover/{i}"
    # the killed process must be the shard's rendezvous owner, or it would never lead
    j = next(j for j in range(1000) if owner("c", [f"old{i}-{j}", f"new{i}"]) == f"old{i}-{j}")
    old = f"old{i}-{j}"
    s = settings(etcd, prefix, old, ttl)
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LEADER), s.model_dump_json()],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    last_ka = 0.0
    loop = asyncio.get_running_loop()
    standby = EtcdCoordinator(settings(etcd, prefix, f"new{i}", ttl), ["c"])
    async with standby:
        task = asyncio.create_task(standby.run())
        try:
            seen = 0
            while seen < 2:  # two confirmed keepalives: it leads and renews
                line = await loop.run_in_executor(None, proc.stdout.readline)
                if not line:
                    raise RuntimeError("leader process died")
                if line.startswith(b"KA"):
                    last_ka = float(line.split()[1])
                    seen += 1
            proc.send_signal(signal.SIGSTOP if stop else signal.SIGKILL)
            killed = time.time()
            # keepalives printed before the signal landed are still in the pipe
            if not stop:
                proc.wait(10)
                for line in proc.stdout.read().splitlines():
                    if line.startswith(b"KA"):
                        last_ka = max(last_ka, float(line.split()[1]))
            while standby.leadership("c") is None:
                await asyncio.sleep(0.01)
            led = time.time()
            lead = standby.leadership("c")
            assert lead is not None
            stale = 0
            if stop:
                proc.send_signal(signal.SIGCONT)
                await asyncio.sleep(1.5)  # the old leader wakes and keeps trying to write
                # a write of the old leader created after the new term began got past fencing
                # (once awake it may lead again, rightly, with a new term: those writes carry it)
                revs = await _revisions(standby, f"w/{old}/")
                stale = sum(1 for rev, term in revs if rev > lead.term and term < lead.term)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            proc.kill()
            proc.wait(10)
    return {
        "kind": "SIGSTOP" if stop else "kill -9",
        "failover_s": led - last_ka,
        "after_signal_s": led - killed,
        "stale_writes": stale,
    }


async def _revisions(c: EtcdCoordinator, sub: str) -> list[tuple[int, int]]:
    """(create_revision, term written) of the old leader's writes."""
    from etcd3aio import prefix_range_end

    api = c._api()
    key = c.state_key("c", sub)
    resp = await api.kv.get(key, range_end=prefix_range_end(key.encode()))
    return [(int(kv.create_revision), int(kv.value)) for kv in resp.kvs]


async def shards_round(
    etcd: EtcdCluster, r: int, n_clusters: int, n_daemons: int, ttl: int
) -> dict[str, Any]:
    prefix = f"/bench/shards/{r}"
    clusters = [f"k{j:03d}" for j in range(n_clusters)]
    ds = [
        EtcdCoordinator(settings(etcd, prefix, f"d{j}", ttl), clusters) for j in range(n_daemons)
    ]
    for d in ds:
        await d.__aenter__()
    tasks = [asyncio.create_task(d.run()) for d in ds]

    def ok(alive: list[EtcdCoordinator]) -> bool:
        count: dict[str, int] = {}
        for d in alive:
            for c in d.led():
                count[c] = count.get(c, 0) + 1
        return len(count) == n_clusters and all(v == 1 for v in count.values())

    t0 = time.monotonic()
    while not ok(ds):
        await asyncio.sleep(0.02)
    initial = time.monotonic() - t0
    victim = ds[0]
    held = set(victim.led())
    tasks[0].cancel()
    victim._lead.clear()
    t1 = time.monotonic()
    alive = ds[1:]
    while not ok(alive):
        await asyncio.sleep(0.02)
    moved_s = time.monotonic() - t1
    for t in tasks[1:]:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for d in alive:
        await d.__aexit__(None, None, None)
    return {"initial_s": initial, "rebalance_s": moved_s, "moved": len(held)}


async def main_async(args: argparse.Namespace, etcd: EtcdCluster) -> dict[str, Any]:
    rounds = []
    for i in range(args.kills):
        r = await failover_round(etcd, i, args.ttl, stop=i % 2 == 1)
        rounds.append(r)
        print(
            f"failover {i:2d} {r['kind']:8s} {r['failover_s']:.2f} s after the last keepalive"
            f" ({r['after_signal_s']:.2f} s after the signal), stale writes {r['stale_writes']}"
        )
    shard = []
    for r in range(args.rounds):
        s = await shards_round(etcd, r, args.clusters, args.daemons, args.ttl)
        shard.append(s)
        print(
            f"shards {r}: {args.clusters} clusters led in {s['initial_s']:.2f} s; one daemon"
            f" dies: {s['moved']} clusters moved in {s['rebalance_s']:.2f} s"
        )
    f = [r["failover_s"] for r in rounds]
    return {
        "kills": len(rounds),
        "ttl_s": args.ttl,
        "failover_p50_s": round(statistics.median(f), 3),
        "failover_p99_s": round(pct(f, 99), 3),
        "failover_max_s": round(max(f), 3),
        "failover_floor_s": args.ttl,
        "failover_p99_over_floor": round(pct(f, 99) / args.ttl, 3),
        "stale_writes": sum(r["stale_writes"] for r in rounds),
        "shard_clusters": args.clusters,
        "shard_daemons": args.daemons,
        "shard_rebalance_p50_s": round(statistics.median(s["rebalance_s"] for s in shard), 3),
        "shard_rebalance_max_s": round(max(s["rebalance_s"] for s in shard), 3),
        "shard_moved_mean": round(statistics.mean(s["moved"] for s in shard), 1),
        "load_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--ttl", type=int, default=5)
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--daemons", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="rbl-bench-etcd-", dir=base) as d:
        etcd = EtcdCluster(Path(d))
        etcd.start_all()
        try:
            figures = asyncio.run(main_async(args, etcd))
        finally:
            etcd.stop()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
