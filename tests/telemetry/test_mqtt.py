"""Telemetry through a real mosquitto: collector subscription, bad payloads over the wire,
broker restart, the agent against libvirt's test driver, and the Last Will on SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import pytest

from rebalancerd.adapters.clock import SystemClock
from rebalancerd.adapters.mqtt import BrokerSettings, MqttStream
from rebalancerd.agent import Agent, AgentConfig
from rebalancerd.domain.model import HostState
from rebalancerd.observability import MemoryMetrics
from rebalancerd.telemetry.collector import Collector, CollectorSettings
from rebalancerd.telemetry.inventory import inventory_from_mapping
from rebalancerd.telemetry.schema import RejectReason, subscription_topics, telemetry_topic
from tests.fixtures.mqtt import MosquittoBroker

from .helpers import CLUSTER, report, vm

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]


async def wait_until(cond: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.02)


class Running:
    def __init__(self, collector: Collector, stream: MqttStream, metrics: MemoryMetrics) -> None:
        self.collector = collector
        self.stream = stream
        self.metrics = metrics


@pytest.fixture
async def running(mosquitto_broker: MosquittoBroker) -> AsyncIterator[Running]:
    metrics = MemoryMetrics()
    stream = MqttStream(
        BrokerSettings(url=mosquitto_broker.url), subscription_topics(CLUSTER), metrics
    )
    inv = inventory_from_mapping(
        [
            {"name": f"h{i}", "libvirt_uri": "test:///default", "cores": 16, "memory_mib": 65536}
            for i in (1, 2, 3)
        ]
    )
    collector = Collector(
        inv, SystemClock(), metrics, CollectorSettings(cluster=CLUSTER, rate_burst=100), stream
    )
    task = asyncio.create_task(collector.run())
    await asyncio.wait_for(stream.connected.wait(), 10)
    yield Running(collector, stream, metrics)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def publish(url: str, items: list[tuple[str, bytes]]) -> None:
    b = BrokerSettings(url=url)
    async with aiomqtt.Client(**b.client_kwargs()) as c:
        for topic, payload in items:
            await c.publish(topic, payload, qos=1)


def _seq(c: Collector, host: str) -> int:
    r = c.host_view(host).last_report
    return -1 if r is None else r.seq


def wire(doc: dict) -> tuple[str, bytes]:
    return telemetry_topic(CLUSTER, doc["host"]), json.dumps(doc).encode()


async def test_reports_arrive_and_bad_payloads_are_counted(
    running: Running, mosquitto_broker: MosquittoBroker
) -> None:
    c = running.collector
    now = time.time()
    t1 = telemetry_topic(CLUSTER, "h1")
    good = report("h1", 10, now, [vm("web1", 800.0)])
    bad = [
        (t1, b"{nope"),
        (t1, json.dumps({**good, "v": 7, "seq": 11}).encode()),
        (t1, json.dumps({k: v for k, v in good.items() if k != "ts"}).encode()),
        wire(report("h1", 11, now, [vm("web1", -1.0)])),
        wire(report("h1", 11, now, [vm("web1", 99_000.0)])),
        wire(good),  # replay
        wire(report("h1", 3, now)),  # out of order
        wire(report("h1", 11, now + 600)),  # clock skew
        wire(report("mallory", 1, now)),  # unknown host
        (telemetry_topic(CLUSTER, "h1`id`"), json.dumps(good).encode()),
        (t1, b"x" * (c.settings.max_payload_bytes + 10)),
    ]
    last = report("h2", 1, now, [vm("db1", 100.0)])
    await publish(mosquitto_broker.url, [wire(good), *bad, wire(last)])
    await wait_until(lambda: c.accepted == 2 and sum(c.rejected.values()) == len(bad), what="all")
    snap = c.current()
    assert snap.vm("web1").host == "h1" and snap.vm("web1").cpu_used_mc == 800
    assert snap.vm("db1").host == "h2"
    assert snap.host("h3").state is HostState.STALE
    m = running.metrics
    assert m.total("telemetry_messages_total") == 2
    expected = {
        "malformed_json": 1,
        "schema_version": 1,
        "missing_field": 1,
        "invalid_value": 1,
        "over_capacity": 1,
        "seq_replayed": 1,
        "seq_out_of_order": 1,
        "clock_skew": 1,
        "unknown_host": 1,
        "bad_name": 1,
        "oversize": 1,
    }
    for reason, n in expected.items():
        assert m.total("telemetry_rejected_total", reason=reason) == n, reason


async def test_host_claiming_another_hosts_vms_over_the_broker_leaves_them_in_place(
    running: Running, mosquitto_broker: MosquittoBroker
) -> None:
    """h2 publishes reports listing h1's VMs as tiny guests (what a hostile host, or an agent
    reading h1's libvirt by mistake, sends); the model keeps them on h1 with h1's figures, h2
    keeps its own VM, and the refused claims are counted."""
    c = running.collector
    now = time.time()
    items: list[tuple[str, bytes]] = []
    for seq in (1, 2, 3):
        h1_vms = [vm("web1", 4000.0, vcpus=8), vm("db1", 3000.0, vcpus=4)]
        items.append(wire(report("h1", seq, now, h1_vms)))
        fake = [vm("h2-own", 500.0), vm("web1", 1.0, vcpus=1), vm("db1", 1.0, vcpus=1)]
        items.append(wire(report("h2", seq, now, fake)))
    async with aiomqtt.Client(**BrokerSettings(url=mosquitto_broker.url).client_kwargs()) as pub:
        for n, (topic, payload) in enumerate(items, 1):
            await pub.publish(topic, payload, qos=1)
            await wait_until(lambda n=n: c.accepted == n, what=f"report {n}")
            await asyncio.sleep(0.05)  # h2's claims arrive after h1's reports, as in real life
    snap = c.current()
    assert {v.name: v.host for v in snap.vms} == {"web1": "h1", "db1": "h1", "h2-own": "h2"}
    assert snap.vm("web1").cpu_used_mc == 4000 and snap.vm("db1").vcpus == 4
    assert not [v for v in snap.vms_on("h2") if v.name in ("web1", "db1")]
    refused = running.metrics.total("telemetry_rejected_total", reason="vm_owned_elsewhere")
    assert refused == 4  # both VMs, in h2's 2nd and 3rd reports (after h1 listed them again)
    assert sum(c.rejected.values()) == 0  # no message was dropped


async def test_broker_restart_is_survived(
    running: Running, mosquitto_broker: MosquittoBroker
) -> None:
    c = running.collector
    await publish(mosquitto_broker.url, [wire(report("h1", 1, time.time()))])
    await wait_until(lambda: c.accepted == 1, what="first report")
    await asyncio.to_thread(mosquitto_broker.restart, 0.3)
    await wait_until(lambda: running.stream.connections >= 2, what="resubscribe")
    await publish(mosquitto_broker.url, [wire(report("h1", 2, time.time(), [vm("after")]))])
    await wait_until(lambda: c.accepted == 2, what="report after restart")
    assert c.current().vm("after").host == "h1"
    assert running.metrics.total("telemetry_reconnects_total") >= 2
    assert running.metrics.gauge("telemetry_connected") == 1


async def test_agent_with_libvirt_test_driver_reaches_collector(
    running: Running, mosquitto_broker: MosquittoBroker
) -> None:
    cfg = AgentConfig(
        host="h1",
        cluster=CLUSTER,
        interval_s=0.2,
        libvirt_uri="test:///default",
        broker=BrokerSettings(url=mosquitto_broker.url),
    )
    agent = Agent(cfg)
    task = asyncio.create_task(agent.run())
    c = running.collector
    await wait_until(lambda: _seq(c, "h1") >= 3, what="3 agent reports")
    # the test driver's default domain; on a loaded machine the first libvirt read may exceed
    # the agent's timeout (reported as libvirt_ok: false, no VMs), so wait for it to show up
    await wait_until(lambda: any(v.name == "test" for v in c.current().vms), what="vm 'test'")
    await wait_until(lambda: len(c.current().vm("test").cpu_history_mc) >= 3, what="3 samples")
    snap = c.current()
    test_vm = snap.vm("test")
    assert test_vm.host == "h1" and test_vm.vcpus == 2 and test_vm.memory_mib == 2048
    assert len(test_vm.cpu_history_mc) >= 3
    assert snap.host("h1").state is HostState.ACTIVE
    last = c.host_view("h1").last_report
    assert last is not None and last.libvirt_ok and last.seq >= 3
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # the clean exit published "offline": the host is stale at once
    await wait_until(lambda: c.current().host("h1").state is HostState.STALE, what="offline")


async def test_agent_survives_broken_libvirt(
    running: Running, mosquitto_broker: MosquittoBroker
) -> None:
    cfg = AgentConfig(
        host="h2",
        cluster=CLUSTER,
        interval_s=0.1,
        libvirt_uri="qemu+unix:///system?socket=/nonexistent/libvirt-sock",
        broker=BrokerSettings(url=mosquitto_broker.url),
    )
    await Agent(cfg).run(max_reports=2)
    c = running.collector
    await wait_until(lambda: _seq(c, "h2") == 2, what="reports without libvirt")
    last = c.host_view("h2").last_report
    assert last is not None and last.libvirt_ok is False and len(last.vms) == 0
    assert c.current().host("h2").state is HostState.STALE


async def test_sigkilled_agent_leaves_offline_status_through_last_will(
    running: Running, mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        f"host: h3\ncluster: {CLUSTER}\ninterval_s: 0.2\nlibvirt_uri: 'test:///default'\n"
        f"broker:\n  url: {mosquitto_broker.url}\n  keepalive_s: 5\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "rebalancerd.cli.main", "agent", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        c = running.collector
        await wait_until(
            lambda: c.current().host("h3").state is HostState.ACTIVE, 30, "agent reports"
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        # well inside stale_after_s (30 s): only the Last Will can make it stale this soon
        await wait_until(lambda: c.current().host("h3").state is HostState.STALE, 10, "LWT")
        assert c.host_view("h3").age_s < c.settings.stale_after_s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the retained status says offline for anyone subscribing later
    got: list[bytes] = []
    async with aiomqtt.Client(**BrokerSettings(url=mosquitto_broker.url).client_kwargs()) as sub:
        await sub.subscribe(f"rebalancer/v1/{CLUSTER}/hosts/h3/status", qos=1)
        async with asyncio.timeout(10):
            async for m in sub.messages:
                got.append(bytes(m.payload))  # type: ignore[arg-type]
                break
    assert json.loads(got[0])["status"] == "offline"


async def test_public_api_path_delivers_and_reconnects(mosquitto_broker: MosquittoBroker) -> None:
    """MqttStream without the paho fast path (aiomqtt's own queue) behaves the same."""
    metrics = MemoryMetrics()
    stream = MqttStream(
        BrokerSettings(url=mosquitto_broker.url),
        subscription_topics(CLUSTER),
        metrics,
        fast_path=False,
    )
    inv = inventory_from_mapping(
        [{"name": "h1", "libvirt_uri": "test:///default", "cores": 4, "memory_mib": 8192}]
    )
    c = Collector(inv, SystemClock(), metrics, CollectorSettings(cluster=CLUSTER), stream)
    task = asyncio.create_task(c.run())
    try:
        await asyncio.wait_for(stream.connected.wait(), 10)
        await publish(mosquitto_broker.url, [wire(report("h1", 1, time.time()))])
        await wait_until(lambda: _seq(c, "h1") == 1, what="first report")
        await asyncio.to_thread(mosquitto_broker.restart, 0.2)
        await wait_until(lambda: stream.connections >= 2, what="resubscribe")
        await publish(mosquitto_broker.url, [wire(report("h1", 2, time.time()))])
        await wait_until(lambda: _seq(c, "h1") == 2, what="report after restart")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_agent_and_collector_both_survive_broker_restart(
    running: Running, mosquitto_broker: MosquittoBroker
) -> None:
    cfg = AgentConfig(
        host="h1",
        cluster=CLUSTER,
        interval_s=0.2,
        libvirt_uri="test:///default",
        broker=BrokerSettings(url=mosquitto_broker.url),
    )
    agent_task = asyncio.create_task(Agent(cfg).run())
    c = running.collector
    try:
        await wait_until(lambda: _seq(c, "h1") >= 2, what="reports before the restart")
        await asyncio.to_thread(mosquitto_broker.restart, 0.5)
        before = _seq(c, "h1")
        # the agent reconnects (jittered backoff) and keeps its seq; the collector resubscribes
        await wait_until(lambda: _seq(c, "h1") >= before + 3, 30, "reports after the restart")
        assert running.stream.connections >= 2
        assert c.current().host("h1").state is HostState.ACTIVE
        assert c.rejected.get(RejectReason.SEQ_OUT_OF_ORDER, 0) == 0
    finally:
        agent_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent_task


async def test_persistent_session_delivers_the_backlog_without_loss(
    mosquitto_broker: MosquittoBroker,
) -> None:
    """Reports published while the collector is away are delivered on reconnect, including the
    ones the broker sends before the collector's callback is installed."""
    metrics = MemoryMetrics()
    broker = BrokerSettings(url=mosquitto_broker.url, client_id="collector-persist")
    stream = MqttStream(broker, subscription_topics(CLUSTER), metrics, session_expiry_s=600)
    inv = inventory_from_mapping(
        [
            {"name": f"h{i}", "libvirt_uri": "test:///default", "cores": 4, "memory_mib": 8192}
            for i in range(1, 51)
        ]
    )
    c = Collector(inv, SystemClock(), metrics, CollectorSettings(cluster=CLUSTER), stream)
    task = asyncio.create_task(c.run())
    await asyncio.wait_for(stream.connected.wait(), 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    now = time.time()
    await publish(
        mosquitto_broker.url,
        [wire(report(f"h{i}", seq, now)) for seq in (1, 2, 3) for i in range(1, 51)],
    )
    stream.connected.clear()
    task = asyncio.create_task(c.run())
    try:
        await wait_until(lambda: c.accepted + sum(c.rejected.values()) >= 150, what="backlog")
        assert c.accepted == 150 and not c.rejected
        assert all(_seq(c, f"h{i}") == 3 for i in range(1, 51))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_agent_speaks_the_systemd_notify_protocol(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    """The agent unit is Type=notify with WatchdogSec: READY=1 once connected, WATCHDOG=1 as
    reports go out, STOPPING=1 on exit, over a real NOTIFY_SOCKET datagram socket."""
    import socket

    from rebalancerd.adapters.systemd import from_env

    path = str(tmp_path / "notify.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    sink.setblocking(False)
    cfg = AgentConfig(
        host="h1",
        cluster=CLUSTER,
        interval_s=0.1,
        libvirt_uri="test:///default",
        broker=BrokerSettings(url=mosquitto_broker.url),
    )
    agent = Agent(cfg, notifier=from_env({"NOTIFY_SOCKET": path}))
    got: list[str] = []

    def drain() -> list[str]:
        while True:
            try:
                got.append(sink.recv(4096).decode())
            except BlockingIOError:
                return got

    task = asyncio.create_task(agent.run())
    try:
        await wait_until(lambda: sum("WATCHDOG=1" in m for m in drain()) >= 2, what="watchdog")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    drain()
    sink.close()
    ready = next(i for i, m in enumerate(got) if "READY=1" in m)
    first_wd = next(i for i, m in enumerate(got) if "WATCHDOG=1" in m)
    assert ready < first_wd, got
    assert any(m.startswith("STATUS=publishing to") for m in got), got
    assert "STOPPING=1" in got[-1], got


async def test_sighup_reloads_the_agent_config_and_keeps_it_on_error(
    running: Running, mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    """`systemctl reload` (ExecReload=kill -HUP) on a real agent process: a good config applies
    (log level, interval, dirty-rate settings; a new host name reconnects under that name), a
    bad one is refused in one line and the agent keeps publishing with the old one."""
    cfg = tmp_path / "agent.yaml"

    def write(host: str, extra: str = "") -> None:
        cfg.write_text(
            f"host: {host}\ncluster: {CLUSTER}\ninterval_s: 0.2\nlibvirt_uri: 'test:///default'\n"
            f"log_format: json\nbroker:\n  url: {mosquitto_broker.url}\n  keepalive_s: 5\n{extra}"
        )

    write("h3")
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rebalancerd.cli.main", "agent", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    c = running.collector

    def logged(event: str) -> list[dict]:
        lines = log_path.read_text(errors="replace").splitlines()
        docs = [json.loads(x) for x in lines if x.startswith("{")]
        return [d for d in docs if d.get("event") == event]

    try:
        await wait_until(lambda: c.current().host("h3").state is HostState.ACTIVE, 30, "h3")
        write("h3", "log_level: debug\ndirty_rate:\n  per_interval: 5\n")
        os.kill(proc.pid, signal.SIGHUP)
        await wait_until(lambda: bool(logged("agent_config_reloaded")), 15, "reloaded")
        (ev,) = logged("agent_config_reloaded")
        assert set(ev["changed"]) == {"log_level", "dirty_rate"} and ev["reconnect"] is False

        cfg.write_text("host: [not, a, name]\n")
        os.kill(proc.pid, signal.SIGHUP)
        await wait_until(lambda: bool(logged("agent_config_reload_failed")), 15, "refused")
        (bad,) = logged("agent_config_reload_failed")
        assert "host" in bad["error"] and "\n" not in bad["error"]
        seq = _seq(c, "h3")
        await wait_until(lambda: _seq(c, "h3") > seq + 2, 15, "still publishing")
        assert proc.poll() is None

        write("h2")  # a new host name: reconnect and publish under it
        os.kill(proc.pid, signal.SIGHUP)
        await wait_until(lambda: c.current().host("h2").state is HostState.ACTIVE, 30, "h2")
        assert proc.poll() is None
        assert logged("agent_config_reloaded")[-1]["reconnect"] is True
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
