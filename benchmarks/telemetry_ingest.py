"""Telemetry ingest through a real local mosquitto into the collector.

    .venv/bin/python benchmarks/telemetry_ingest.py [--hosts 10000] [--rounds 5] [--vms 8]
                                                     [--live-seconds 30] [--interval 10]

Phases (one mosquitto started by this script on 127.0.0.1, publishers in 2 subprocesses using
plain paho clients, MQTT v5, QoS 1):

1. ceiling: a bare paho subscriber (persistent session) drains a backlog of hosts x rounds
   reports (it only counts messages) -> ``ceiling_msgs_per_s``;
   for context, ``mosquitto_sub`` (C) drains the same backlog -> ``mosquitto_sub_msgs_per_s``.
2. ingest: the collector (``adapters.mqtt.MqttStream`` -> ``Collector.ingest_batch``: decode,
   validate, sequence/skew/capacity checks, smoothing) drains the same backlog
   -> ``ingest_msgs_per_s``, ``ratio`` = ingest / ceiling.
3. live: N hosts each report every ``--interval`` s (spread evenly) for ``--live-seconds``; the
   staleness of a report = time it became visible in the collector's model minus its
   timestamp -> ``p50/p99/max_staleness_s``; also a full ``current()`` snapshot build time.

Targets (issue 3): ingest >= 10,000 msg/s, ratio >= 0.5, p99 staleness < 2 s at 10,000 hosts /
10 s. Last line: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def host_name(i: int) -> str:
    return f"hv{i:05d}"


def template(cluster: str, host: str, n_vms: int, boot: int) -> bytes:
    """Report with ``%d`` (seq) and ``%.3f`` (ts) placeholders: formatting is the only per-message
    work of a publisher."""
    rest = {
        "cluster": cluster,
        "host": host,
        "boot": boot,
        "interval_s": 10.0,
        "libvirt_ok": True,
        "host_stats": {
            "cores": 32,
            "cpu_pct": 41.5,
            "cpu_per_core_pct": [41.5] * 32,
            "load": [12.1, 11.8, 11.0],
            "mem_total_mib": 262144,
            "mem_available_mib": 100000,
            "net_rx_bytes_s": 1.2e7,
            "net_tx_bytes_s": 9.1e6,
            "disk_read_bytes_s": 2.1e6,
            "disk_write_bytes_s": 4.4e6,
            "pressure": {"cpu_some": 1.5, "memory_some": 0.0, "memory_full": 0.0, "io_some": 0.3},
            "temp_max_c": 61.0,
        },
        "health": {"degraded": False, "reasons": []},
        "vms": [
            {
                "name": f"{host}-vm{j}",
                "state": "running",
                "vcpus": 4,
                "memory_mib": 8192,
                "cpu_mc": 350.0 + 100 * j,
                "memory_used_mib": 6000,
                "block_rd_bytes_s": 1000.0,
                "block_wr_bytes_s": 2000.0,
                "net_rx_bytes_s": 3000.0,
                "net_tx_bytes_s": 4000.0,
                "dirty_rate_mib_s": 5.0,
            }
            for j in range(n_vms)
        ],
    }
    body = json.dumps(rest, separators=(",", ":"))[1:]
    return b'{"v":1,"kind":"telemetry","seq":%d,"ts":%.3f,' + body.replace("%", "%%").encode()


# ----------------------------------------------------------------------------------------------
# publisher subprocess


def run_publisher(args: argparse.Namespace) -> int:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    done = [0]

    def on_publish(*_a: object) -> None:
        done[0] += 1

    c = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"pub-{os.getpid()}",
        protocol=paho.MQTTv5,
    )
    c.on_publish = on_publish
    c.max_inflight_messages_set(2000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", args.port, keepalive=60)
    c.loop_start()
    hosts = [host_name(i) for i in range(args.first, args.first + args.count)]
    tmpl = [template(args.cluster, h, args.vms, 1) for h in hosts]
    topics = [f"rebalancer/v1/{args.cluster}/hosts/{h}/telemetry" for h in hosts]
    total = len(hosts) * args.rounds
    t0 = time.monotonic()
    n = 0
    for r in range(args.rounds):
        for i in range(len(hosts)):
            if args.rate:
                due = t0 + n / args.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            c.publish(topics[i], tmpl[i] % (args.seq0 + r, time.time()), qos=1)
            n += 1
    while done[0] < total and time.monotonic() - t0 < 600:
        time.sleep(0.01)
    elapsed = time.monotonic() - t0
    c.disconnect()
    c.loop_stop()
    print(json.dumps({"published": done[0], "elapsed_s": elapsed}))
    return 0


def publish(
    port: int,
    cluster: str,
    hosts: int,
    rounds: int,
    vms: int,
    seq0: int,
    rate: float = 0.0,
    procs: int = 2,
) -> list[subprocess.Popen[bytes]]:
    per = -(-hosts // procs)
    out = []
    for p in range(procs):
        first = p * per
        count = min(per, hosts - first)
        if count <= 0:
            continue
        out.append(
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--role",
                    "publisher",
                    "--port",
                    str(port),
                    "--cluster",
                    cluster,
                    "--first",
                    str(first),
                    "--count",
                    str(count),
                    "--rounds",
                    str(rounds),
                    "--vms",
                    str(vms),
                    "--seq0",
                    str(seq0),
                    "--rate",
                    str(rate / procs if rate else 0.0),
                ],
                stdout=subprocess.PIPE,
            )
        )
    return out


def wait_publishers(procs: list[subprocess.Popen[bytes]]) -> int:
    total = 0
    for p in procs:
        out, _ = p.communicate(timeout=900)
        total += json.loads(out.decode().strip().splitlines()[-1])["published"]
    return total


# ----------------------------------------------------------------------------------------------
# ceiling: bare paho subscriber


def bare_session(port: int, cluster: str, connect_only: bool, expect: int) -> float:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    count = [0]
    last = [0.0]

    def on_message(_c: object, _u: object, _m: object) -> None:
        count[0] += 1
        last[0] = time.perf_counter()

    c = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bare-{cluster}",
        protocol=paho.MQTTv5,
    )
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    t0 = time.perf_counter()
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    if connect_only:
        c.subscribe(f"rebalancer/v1/{cluster}/hosts/+/telemetry", qos=1)
        for _ in range(20):
            c.loop(0.05)
        c.disconnect()
        return 0.0
    while count[0] < expect and time.perf_counter() - t0 < 600:
        c.loop(0.5)
    c.disconnect()
    return count[0] / (last[0] - t0) if count[0] else 0.0


def mosquitto_sub_rate(port: int, cluster: str, expect: int, register: bool) -> float:
    exe = shutil.which("mosquitto_sub")
    if exe is None:
        return 0.0
    base = [exe, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-q", "1", "-c",
            "-i", f"msub-{cluster}", "-x", "3600", "-t",
            f"rebalancer/v1/{cluster}/hosts/+/telemetry"]  # fmt: skip
    if register:
        subprocess.run([*base, "-W", "1"], capture_output=True, check=False)
        return 0.0
    t0 = time.perf_counter()
    subprocess.run([*base, "-C", str(expect)], stdout=subprocess.DEVNULL, check=False, timeout=600)
    return expect / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------


async def collector_phases(args: argparse.Namespace, port: int) -> dict[str, float]:
    import structlog

    from rebalancerd.adapters.clock import SystemClock
    from rebalancerd.adapters.mqtt import BrokerSettings, MqttStream
    from rebalancerd.observability import MemoryMetrics
    from rebalancerd.ports import Message
    from rebalancerd.telemetry.collector import Collector, CollectorSettings
    from rebalancerd.telemetry.inventory import inventory_from_mapping
    from rebalancerd.telemetry.schema import subscription_topics

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    inv = inventory_from_mapping(
        [
            {"name": host_name(i), "libvirt_uri": f"qemu+tcp://10.1.{i // 250}.{i % 250}/system",
             "cores": 32, "memory_mib": 262144}
            for i in range(args.hosts)
        ]
    )  # fmt: skip
    out: dict[str, float] = {}

    # ---- backlog drain through the collector
    cluster = "benchB"
    metrics = MemoryMetrics()
    broker = BrokerSettings(url=f"mqtt://127.0.0.1:{port}", client_id="collector-bench")
    stream = MqttStream(
        broker, subscription_topics(cluster), metrics, session_expiry_s=3600, max_queued=200_000
    )
    collector = Collector(
        inv, SystemClock(), metrics, CollectorSettings(cluster=cluster, max_clock_skew_s=600),
        stream,
    )  # fmt: skip
    task = asyncio.create_task(collector.run())
    await asyncio.wait_for(stream.connected.wait(), 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    expect = args.hosts * args.rounds
    pubs = publish(port, cluster, args.hosts, args.rounds, args.vms, 1)
    sent = await asyncio.to_thread(wait_publishers, pubs)
    stream.connected.clear()
    prof = None
    if os.environ.get("BENCH_PROFILE"):
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    task = asyncio.create_task(collector.run())
    seen, progress_at = -1, time.perf_counter()
    while (done := collector.accepted + sum(collector.rejected.values())) < sent:
        await asyncio.sleep(0.01)
        if done != seen:
            seen, progress_at = done, time.perf_counter()
        elif time.perf_counter() - progress_at > 10:
            print(f"collector stalled at {done} of {sent} messages: {sent - done} lost")
            break
    t1 = progress_at if done < sent else time.perf_counter()
    if prof is not None:
        import pstats

        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    out["ingest_msgs_per_s"] = collector.accepted / (t1 - t0)
    out["ingest_accepted"] = collector.accepted
    out["ingest_rejected"] = sum(collector.rejected.values())
    out["ingest_expected"] = expect
    out["ingest_lost"] = sent - collector.accepted - sum(collector.rejected.values())
    ts = time.perf_counter()
    snap = collector.current()
    out["snapshot_build_s"] = time.perf_counter() - ts
    out["snapshot_vms"] = len(snap.vms)

    # ---- live: every host reports every interval
    cluster = "benchL"
    metrics = MemoryMetrics()
    stream = MqttStream(BrokerSettings(url=f"mqtt://127.0.0.1:{port}"),
                        subscription_topics(cluster), metrics)  # fmt: skip
    staleness: list[float] = []

    class Timed:
        async def batches(self) -> AsyncIterator[list[Message]]:
            async for batch in stream.batches():
                t_deq = time.time()
                yield batch
                extra = time.time() - t_deq
                for topic, _ in batch:
                    staleness.append(live.report_lag_s(topic.split("/")[4]) + extra)

    live = Collector(inv, SystemClock(), metrics, CollectorSettings(cluster=cluster), Timed())
    task = asyncio.create_task(live.run())
    await asyncio.wait_for(stream.connected.wait(), 10)
    rounds = max(1, round(args.live_seconds / args.interval))
    rate = args.hosts / args.interval
    pubs = publish(port, cluster, args.hosts, rounds, args.vms, 1, rate=rate)
    sent = await asyncio.to_thread(wait_publishers, pubs)
    deadline = time.perf_counter() + 30
    while live.accepted < sent and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    ts = time.perf_counter()
    snap = live.current()
    out["live_snapshot_build_s"] = time.perf_counter() - ts
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    staleness.sort()
    n = len(staleness)
    out["live_sent"] = sent
    out["live_accepted"] = live.accepted
    out["live_rate_msgs_per_s"] = rate
    out["p50_staleness_s"] = staleness[n // 2] if n else float("inf")
    out["p99_staleness_s"] = staleness[min(n - 1, int(n * 0.99))] if n else float("inf")
    out["max_staleness_s"] = staleness[-1] if n else float("inf")
    out["live_fresh_hosts"] = sum(1 for h in snap.hosts if h.state.value == "active")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", default="bench")
    ap.add_argument("--hosts", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--vms", type=int, default=8)
    ap.add_argument("--live-seconds", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--no-mosquitto-sub", action="store_true")
    # publisher role
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cluster", default="bench")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--seq0", type=int, default=1)
    ap.add_argument("--rate", type=float, default=0.0)
    args = ap.parse_args()
    if args.role == "publisher":
        return run_publisher(args)

    from tests.fixtures.mqtt import MosquittoBroker

    tmp = Path(tempfile.mkdtemp(prefix="rebalancerd-bench-"))
    broker = MosquittoBroker(
        tmp, ["max_queued_messages 0", "max_queued_bytes 0", "max_inflight_messages 1000"]
    )
    try:
        broker.start()
        port = broker.port
        payload_len = len(template("benchA", host_name(0), args.vms, 1) % (1, time.time()))
        print(f"hosts {args.hosts}, {args.vms} VMs/host, payload {payload_len} bytes, "
              f"backlog {args.hosts * args.rounds} messages")  # fmt: skip

        # ceiling: bare paho subscriber
        bare_session(port, "benchA", True, 0)
        sent = wait_publishers(publish(port, "benchA", args.hosts, args.rounds, args.vms, 1))
        ceiling = bare_session(port, "benchA", False, sent)
        print(f"bare paho subscriber drain:   {ceiling:10.0f} msg/s ({sent} messages)")
        msub = 0.0
        if not args.no_mosquitto_sub:
            mosquitto_sub_rate(port, "benchS", sent, True)
            sent_s = wait_publishers(publish(port, "benchS", args.hosts, args.rounds, args.vms, 1))
            msub = mosquitto_sub_rate(port, "benchS", sent_s, False)
            print(f"mosquitto_sub (C) drain:      {msub:10.0f} msg/s")

        res = asyncio.run(collector_phases(args, port))
        ingest = res["ingest_msgs_per_s"]
        acc, rej = res["ingest_accepted"], res["ingest_rejected"]
        print(f"collector ingest drain:       {ingest:10.0f} msg/s", end="")
        print(f" (accepted {acc:.0f}, rejected {rej:.0f})")
        print(f"ratio collector / bare:       {ingest / ceiling:10.2f}")
        print(f"snapshot build ({res['snapshot_vms']:.0f} VMs):  {res['snapshot_build_s']:10.3f} s")
        print(f"live {args.hosts} hosts every {args.interval:g} s for {args.live_seconds:g} s: "
              f"sent {res['live_sent']:.0f}, accepted {res['live_accepted']:.0f}, "
              f"fresh hosts {res['live_fresh_hosts']:.0f}")  # fmt: skip
        print(f"staleness p50 {res['p50_staleness_s']:.3f} s, p99 {res['p99_staleness_s']:.3f} s, "
              f"max {res['max_staleness_s']:.3f} s")  # fmt: skip
        figures = {
            "ingest_msgs_per_s": round(ingest, 1),
            "ceiling_msgs_per_s": round(ceiling, 1),
            "ratio": round(ingest / ceiling, 3) if ceiling else 0.0,
            "p99_staleness_s": round(res["p99_staleness_s"], 4),
            "p50_staleness_s": round(res["p50_staleness_s"], 4),
            "max_staleness_s": round(res["max_staleness_s"], 4),
            "mosquitto_sub_msgs_per_s": round(msub, 1),
            "hosts": args.hosts,
            "vms_per_host": args.vms,
            "payload_bytes": payload_len,
            "backlog_messages": args.hosts * args.rounds,
            "ingest_accepted": int(res["ingest_accepted"]),
            "ingest_lost": int(res["ingest_lost"]),
            "live_sent": int(res["live_sent"]),
            "live_accepted": int(res["live_accepted"]),
            "live_fresh_hosts": int(res["live_fresh_hosts"]),
            "snapshot_build_s": round(res["snapshot_build_s"], 3),
        }
        print(json.dumps(figures))
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
