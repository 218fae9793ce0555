"""A real mosquitto with TLS client certificates and the shipped per-host ACL
(deploy/mosquitto/rebalancerd.acl): host h1's credentials cannot publish as h2 nor subscribe to
the control topics; a client without a certificate cannot connect at all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from rebalancerd.adapters.clock import SystemClock
from rebalancerd.adapters.mqtt import BrokerSettings, MqttStream
from rebalancerd.domain.model import HostState
from rebalancerd.observability import MemoryMetrics
from rebalancerd.telemetry.collector import Collector, CollectorSettings
from rebalancerd.telemetry.inventory import inventory_from_mapping
from rebalancerd.telemetry.schema import subscription_topics, telemetry_topic
from tests.fixtures.mqtt import BrokerFactory, MosquittoBroker

from .helpers import CLUSTER, report, vm

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(90)]

ACL = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "rebalancerd.acl"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path, clients: list[str]) -> None:
    """Throwaway CA, a server cert for 127.0.0.1, and one client cert per name (CN = name)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to build the test CA")
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=rebalancerd test CA", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ["server", *clients]:
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={'localhost' if name == 'server' else name}", cwd=d)  # fmt: skip
        extra = ["-extfile", "san.cnf"] if name == "server" else []
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", *extra, cwd=d)  # fmt: skip


@pytest.fixture
def secure_broker(mosquitto_factory: BrokerFactory, tmp_path: Path) -> tuple[MosquittoBroker, Path]:
    pki = tmp_path / "pki"
    make_pki(pki, ["rebalancerd", "h1", "h2"])
    broker = mosquitto_factory(
        [
            "allow_anonymous false",
            f"cafile {pki / 'ca.crt'}",
            f"certfile {pki / 'server.crt'}",
            f"keyfile {pki / 'server.key'}",
            "require_certificate true",
            "use_identity_as_username true",
            f"acl_file {ACL}",
        ]
    )
    return broker, pki


def creds(broker: MosquittoBroker, pki: Path, who: str) -> BrokerSettings:
    return BrokerSettings(
        url=f"mqtts://127.0.0.1:{broker.port}",
        ca_file=pki / "ca.crt",
        cert_file=pki / f"{who}.crt",
        key_file=pki / f"{who}.key",
    )


async def send(client: aiomqtt.Client, host: str, seq: int) -> None:
    payload = json.dumps(report(host, seq, time.time())).encode()
    await client.publish(telemetry_topic(CLUSTER, host), payload, qos=1)


async def _wait(cond, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture
async def collector(secure_broker: tuple[MosquittoBroker, Path]) -> AsyncIterator[Collector]:
    broker, pki = secure_broker
    metrics = MemoryMetrics()
    stream = MqttStream(creds(broker, pki, "rebalancerd"), subscription_topics(CLUSTER), metrics)
    inv = inventory_from_mapping(
        [
            {"name": h, "libvirt_uri": "test:///default", "cores": 8, "memory_mib": 32768}
            for h in ("h1", "h2")
        ]
    )
    c = Collector(inv, SystemClock(), metrics, CollectorSettings(cluster=CLUSTER), stream)
    task = asyncio.create_task(c.run())
    await asyncio.wait_for(stream.connected.wait(), 15)
    yield c
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_host_cannot_publish_as_another_host(
    secure_broker: tuple[MosquittoBroker, Path], collector: Collector
) -> None:
    broker, pki = secure_broker
    now = time.time()
    forged = report("h2", 1, now, [vm("forged-vm")])
    async with aiomqtt.Client(**creds(broker, pki, "h1").client_kwargs()) as h1:
        # as h2, on h2's topic, with h1's certificate: the broker must drop it
        await h1.publish(telemetry_topic(CLUSTER, "h2"), json.dumps(forged).encode(), qos=1)
        await send(h1, "h1", 1)
    await _wait(lambda: collector.host_view("h1").last_report is not None)
    # h1's own report came through the same connection after the forged one
    async with aiomqtt.Client(**creds(broker, pki, "h2").client_kwargs()) as h2:
        await send(h2, "h2", 2)
    await _wait(lambda: collector.host_view("h2").last_report is not None)
    last = collector.host_view("h2").last_report
    assert last is not None and last.seq == 2
    names = {v.name for v in collector.current().vms}
    assert "forged-vm" not in names
    assert collector.current().host("h2").state is HostState.ACTIVE
    assert sum(collector.rejected.values()) == 0  # it never reached the collector at all


async def test_host_cannot_subscribe_to_control_or_other_hosts(
    secure_broker: tuple[MosquittoBroker, Path], collector: Collector
) -> None:
    broker, pki = secure_broker
    control = f"rebalancer/v1/{CLUSTER}/control/commands"
    got: list[str] = []
    control_seen: list[str] = []
    async with (
        aiomqtt.Client(**creds(broker, pki, "h1").client_kwargs()) as h1,
        aiomqtt.Client(**creds(broker, pki, "rebalancerd").client_kwargs()) as daemon,
    ):
        # mosquitto may grant the SUBACK and filter at delivery, or refuse it (v5 0x87):
        # either way nothing may be delivered to h1
        await h1.subscribe(f"rebalancer/v1/{CLUSTER}/control/#", qos=1)
        await h1.subscribe(telemetry_topic(CLUSTER, "h2"), qos=1)
        await h1.subscribe("#", qos=1)
        await daemon.subscribe(f"rebalancer/v1/{CLUSTER}/control/#", qos=1)

        async def listen(client: aiomqtt.Client, into: list[str]) -> None:
            async for m in client.messages:
                into.append(m.topic.value)

        tasks = [
            asyncio.create_task(listen(h1, got)),
            asyncio.create_task(listen(daemon, control_seen)),
        ]
        await daemon.publish(control, b'{"cmd":"drain","host":"h1"}', qos=1)
        async with aiomqtt.Client(**creds(broker, pki, "h2").client_kwargs()) as h2:
            await send(h2, "h2", 5)
        # the allowed subscribers got both messages; h1 got nothing meanwhile
        await _wait(lambda: collector.host_view("h2").last_report is not None)
        await _wait(lambda: control_seen == [control])
        await asyncio.sleep(0.3)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await t
    assert got == []


async def test_client_without_certificate_is_refused(
    secure_broker: tuple[MosquittoBroker, Path],
) -> None:
    broker, pki = secure_broker
    no_cert = BrokerSettings(url=f"mqtts://127.0.0.1:{broker.port}", ca_file=pki / "ca.crt")
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(**{**no_cert.client_kwargs(), "timeout": 2.0}):
            pass
    plain = BrokerSettings(url=f"mqtt://127.0.0.1:{broker.port}", username="h1")
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(**{**plain.client_kwargs(), "timeout": 2.0}):
            pass
