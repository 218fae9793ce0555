"""Soak: 24 simulated hours at 1,000 hosts, telemetry through a real mosquitto into the
collector, planning with rebalancerd.planner.make_plan, in accelerated (lock-step) time.

    .venv/bin/python benchmarks/soak.py [--hosts 1000] [--vms 10] [--hours 24]
                                        [--interval 300] [--plan-every 1800]

Every ``--interval`` simulated seconds each host publishes one report (paho, QoS 1) whose
``ts`` is the simulated time; the collector (``MqttStream`` -> ``Collector``, driven by a clock
the benchmark advances) ingests the round, then every ``--plan-every`` simulated seconds the
planner runs on ``collector.current()`` and its moves are applied to the simulated placement (the
next reports show the VMs on their new hosts). VM CPU follows a daily sine with noise; every 6
simulated hours one host goes silent for an hour (it must turn stale and come back).

Prints RSS over time; last line: one JSON object (rss_start_mib, rss_end_mib, exceptions,
simulated_hours, hosts, decisions_per_hour, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
import structlog

from rebalancerd.adapters.mqtt import BrokerSettings, MqttStream
from rebalancerd.domain.model import HostState
from rebalancerd.observability import MemoryMetrics
from rebalancerd.telemetry.collector import Collector, CollectorSettings
from rebalancerd.telemetry.inventory import inventory_from_mapping
from rebalancerd.telemetry.schema import subscription_topics, telemetry_topic
from tests.fixtures.mqtt import MosquittoBroker

CLUSTER = "soak"
T0 = 1_767_225_600.0


class SimClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return T0 + self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / (1024 * 1024)


async def soak(args: argparse.Namespace, port: int) -> dict[str, object]:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    try:
        from rebalancerd.planner import make_plan
        from rebalancerd.policy.schema import default_policy
    except ImportError:  # planner not there: telemetry-only soak
        make_plan = None  # type: ignore[assignment]

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    rng = random.Random(7)
    hosts = [f"hv{i:04d}" for i in range(args.hosts)]
    inv = inventory_from_mapping(
        [
            {"name": h, "libvirt_uri": f"qemu+tcp://10.2.{i // 250}.{i % 250}/system",
             "cores": 32, "memory_mib": 262144}
            for i, h in enumerate(hosts)
        ]
    )  # fmt: skip
    placement: dict[str, str] = {}
    base: dict[str, float] = {}
    phase: dict[str, float] = {}
    for i, h in enumerate(hosts):
        skew = 2.5 if i % 100 == 0 else 1.0  # a few hot hosts so the planner has work
        for j in range(args.vms):
            vm = f"{h}-vm{j}"
            placement[vm] = h
            base[vm] = rng.uniform(200, 1400) * skew
            phase[vm] = rng.uniform(0, 2 * math.pi)

    clock = SimClock()
    metrics = MemoryMetrics()
    stream = MqttStream(BrokerSettings(url=f"mqtt://127.0.0.1:{port}"),
                        subscription_topics(CLUSTER), metrics)  # fmt: skip
    settings = CollectorSettings(
        cluster=CLUSTER, stale_after_s=args.interval * 2.5, max_clock_skew_s=args.interval
    )
    collector = Collector(inv, clock, metrics, settings, stream)
    task = asyncio.create_task(collector.run())
    await asyncio.wait_for(stream.connected.wait(), 10)

    pub = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="soak-pub",
                      protocol=paho.MQTTv5)  # fmt: skip
    pub.max_inflight_messages_set(2000)
    pub.max_queued_messages_set(0)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    topics = {h: telemetry_topic(CLUSTER, h) for h in hosts}

    policy = default_policy() if make_plan is not None else None
    exceptions = 0
    decisions = 0
    plans = 0
    plan_s: list[float] = []
    stale_seen = 0
    rss: list[tuple[float, float]] = []
    rounds = int(args.hours * 3600 / args.interval)
    expected = 0
    rss0 = rss_mib()
    t_real = time.perf_counter()
    silent: str | None = None
    for r in range(1, rounds + 1):
        clock.t = r * args.interval
        hour = clock.t / 3600
        # one host goes silent for an hour every 6 hours
        silent = hosts[(r * 13) % len(hosts)] if int(hour) % 6 == 5 and silent is None else silent
        if silent is not None and int(hour) % 6 != 5:
            silent = None
        by_host: dict[str, list[dict[str, object]]] = {h: [] for h in hosts}
        day = 2 * math.pi * clock.t / 86400
        for vm, h in placement.items():
            cpu = base[vm] * (1 + 0.5 * math.sin(day + phase[vm])) * rng.uniform(0.9, 1.1)
            by_host[h].append(
                {"name": vm, "state": "running", "vcpus": 4, "memory_mib": 8192,
                 "cpu_mc": round(min(cpu, 4000.0), 1), "memory_used_mib": 6000,
                 "dirty_rate_mib_s": 4.0}
            )  # fmt: skip
        sent = 0
        for h in hosts:
            if h == silent:
                continue
            doc = {
                "v": 1, "kind": "telemetry", "cluster": CLUSTER, "host": h, "boot": 1,
                "seq": r, "ts": clock.now(), "interval_s": args.interval,
                "host_stats": {"cores": 32, "cpu_pct": 40.0, "mem_total_mib": 262144,
                               "mem_available_mib": 100000},
                "vms": by_host[h],
            }  # fmt: skip
            pub.publish(topics[h], json.dumps(doc, separators=(",", ":")), qos=1)
            sent += 1
        expected += sent
        deadline = time.perf_counter() + 120
        while collector.accepted + sum(collector.rejected.values()) < expected:
            await asyncio.sleep(0.005)
            if time.perf_counter() > deadline:
                print(f"round {r}: only {collector.accepted} of {expected} ingested")
                exceptions += 1
                expected = collector.accepted + sum(collector.rejected.values())
                break
        if task.done():
            exceptions += 1
            print("collector task ended:", task.exception())
            break
        try:
            if silent is not None and collector.host_states()[silent] is HostState.STALE:
                stale_seen += 1
            plan_now = r % max(1, int(args.plan_every / args.interval)) == 0
            if make_plan is not None and policy is not None and plan_now:
                snap = collector.current()
                t0 = time.perf_counter()
                plan = make_plan(snap, policy, now=clock.now(), time_limit_s=args.plan_limit)
                plan_s.append(time.perf_counter() - t0)
                plans += 1
                for m in plan.migrations:
                    if placement.get(m.vm) == m.source:
                        placement[m.vm] = m.target
                        decisions += 1
        except Exception:
            exceptions += 1
            traceback.print_exc(limit=4)
        if r % max(1, int(7200 / args.interval)) == 0 or r == 1:
            rss.append((hour, rss_mib()))
            rej = sum(collector.rejected.values())
            real = time.perf_counter() - t_real
            line = f"sim {hour:5.1f} h  rss {rss[-1][1]:7.1f} MiB  accepted {collector.accepted:8d}"
            line += (
                f"  rejected {rej:5d}  moves {decisions:5d}  plans {plans:3d}  real {real:6.0f} s"
            )
            print(line)
    pub.disconnect()
    pub.loop_stop()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    hours = rounds * args.interval / 3600
    rss_end = rss_mib()
    # steady state: once every VM's fixed-size CPU ring is full (history_len reports)
    warm_h = settings.history_len * args.interval / 3600
    steady = next((v for h, v in rss if h >= warm_h), rss[-1][1] if rss else rss0)
    return {
        "rss_start_mib": round(rss0, 1),
        "rss_steady_mib": round(steady, 1),
        "rss_end_mib": round(rss_end, 1),
        "rss_growth_after_warmup_mib": round(rss_end - steady, 1),
        "warmup_hours": round(warm_h, 2),
        "exceptions": exceptions,
        "simulated_hours": round(hours, 2),
        "hosts": args.hosts,
        "vms": len(placement),
        "messages_accepted": collector.accepted,
        "messages_rejected": sum(collector.rejected.values()),
        "rejected_by_reason": {k.value: v for k, v in collector.rejected.items()},
        "plans": plans,
        "decisions": decisions,
        "decisions_per_hour": round(decisions / hours, 2) if hours else 0.0,
        "plan_p50_s": round(sorted(plan_s)[len(plan_s) // 2], 3) if plan_s else None,
        "silent_host_rounds_stale": stale_seen,
        "real_seconds": round(time.perf_counter() - t_real, 1),
        "planner": make_plan is not None,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--vms", type=int, default=10)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--interval", type=float, default=300.0)
    ap.add_argument("--plan-every", type=float, default=1800.0)
    ap.add_argument("--plan-limit", type=float, default=2.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rebalancerd-soak-"))
    broker = MosquittoBroker(tmp, ["max_queued_messages 0", "max_inflight_messages 1000"])
    try:
        broker.start()
        res = asyncio.run(soak(args, broker.port))
        print(json.dumps(res))
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if res["exceptions"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
