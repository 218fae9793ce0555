"""Issue 9, hostile input at the daemon level: telemetry naming hosts outside the inventory,
addresses and shell metacharacters in host and VM names, floods from one client, published
into the real broker while `rebalancerd run` drains a lab host.

The daemon must ignore and count all of it, keep working on the real hosts, and never contact
an address it read from telemetry nor start a process: a canary TCP listener on the address
named in the payloads sees no connection, every TCP socket of the daemon sampled during the
test is its /metrics listener or its broker connection (libvirt is reached over the inventory's
unix sockets), and the daemon never has a child process.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.faults.helpers import (
    JournalReader,
    LabAgents,
    assert_each_runs_once,
    lab_daemon,
    metric,
    placement,
    sees_vms,
    wait_cycles,
    wait_for,
)

pytestmark = [pytest.mark.lab, pytest.mark.fault, pytest.mark.mqtt]

VM = "hx-vm"
FLOOD = 400

POLICY = """\
apiVersion: rebalancerd/v1
kind: Policy
name: hostile
mode: drain
limits:
  cooldown_s: 0
"""


class Canary:
    """A TCP listener on 127.0.0.1 that records every connection attempt."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.hits: list[Any] = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, addr = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.hits.append(addr)
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._t.join(timeout=2)
        self.sock.close()


class Watcher:
    """Samples the daemon's TCP sockets and child processes every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.inet: set[tuple[str, Any, Any]] = set()
        self.children: list[str] = []
        self.samples = 0
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                for c in self.proc.net_connections(kind="inet"):
                    self.inet.add((c.status, tuple(c.laddr), tuple(c.raddr) if c.raddr else ()))
                self.children += [" ".join(ch.cmdline()) for ch in self.proc.children(True)]
                self.samples += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                return
            time.sleep(0.05)

    def close(self) -> None:
        self._stop = True
        self._t.join(timeout=2)


def _hostile_lines(template: dict[str, Any], canary: str) -> list[tuple[str, dict[str, Any]]]:
    """(topic, report) pairs: each must be rejected, none may lead anywhere."""
    root = "rebalancer/v1/default/hosts"
    now = time.time()
    evil_vm = {**template["vms"][0]} if template["vms"] else {}
    out: list[tuple[str, dict[str, Any]]] = []
    # a host outside the inventory, announcing where "its" libvirtd is
    out.append(
        (
            f"{root}/evil/telemetry",
            {**template, "host": "evil", "libvirt_uri": canary, "seq": 1, "ts": now},
        )
    )
    # names that are addresses or shell: in the topic, in the payload (MQTT forbids + in topics)
    port = canary.rsplit(":", 1)[-1].split("/")[0]
    for name in (f"127.0.0.1:{port}", "tcp:", f"$(nc 127.0.0.1 {port})", "h1;id"):
        out.append((f"{root}/{name}/telemetry", {**template, "host": name, "seq": 2, "ts": now}))
    # a real host's topic, but a VM named like an address / a command
    if evil_vm:
        for name in (canary, f"vm;curl {canary}", "`reboot`"):
            out.append(
                (
                    f"{root}/{template['host']}/telemetry",
                    {**template, "vms": [{**evil_vm, "name": name}], "seq": 10**6, "ts": now},
                )
            )
    # a flood from one client for a host that does not exist
    for i in range(FLOOD):
        out.append((f"{root}/flood{i % 7}/telemetry", {**template, "host": f"flood{i % 7}"}))
    return out


def _publish_lines(broker: Any, pairs: list[tuple[str, dict[str, Any]]]) -> None:
    by_topic: dict[str, list[str]] = {}
    for topic, payload in pairs:
        by_topic.setdefault(topic, []).append(json.dumps(payload))
    for topic, lines in by_topic.items():
        subprocess.run(
            [
                *("mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1"),
                *("-t", topic, "-l"),
            ],
            input="\n".join(lines) + "\n",
            text=True,
            check=True,
            timeout=30,
        )


def test_hostile_telemetry_is_counted_and_never_followed(
    lab: Any, mosquitto_broker: Any, workdir: Path
) -> None:
    h1 = lab.hosts[0].name
    names = {h.name for h in lab.hosts}
    lab.define_guest(h1, VM, 64)
    canary = Canary()
    canary_uri = f"qemu+tcp://127.0.0.1:{canary.port}/system"
    agents = LabAgents(workdir, lab, mosquitto_broker.url)
    d = lab_daemon(workdir, lab, mosquitto_broker.url, POLICY, plan_s=1.0)
    journal = JournalReader(workdir / "state")
    watcher: Watcher | None = None
    d.start()
    try:
        d.wait_ready()
        assert d.proc is not None
        watcher = Watcher(d.proc.pid)
        wait_for(lambda: sees_vms(d, 1), 60, "telemetry from all agents")
        template = json.loads(
            subprocess.run(
                [
                    *("mosquitto_sub", "-h", "127.0.0.1", "-p", str(mosquitto_broker.port)),
                    *("-C", "1", "-t", f"rebalancer/v1/default/hosts/{h1}/telemetry"),
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout
        )
        assert template["vms"], template
        before = {
            r: metric(d, "rebalancerd_telemetry_rejected_total", reason=r)
            for r in ("unknown_host", "bad_name", "bad_topic")
        }

        _publish_lines(mosquitto_broker, _hostile_lines(template, canary_uri))
        wait_for(
            lambda: (
                metric(d, "rebalancerd_telemetry_rejected_total", reason="unknown_host")
                >= before["unknown_host"] + FLOOD + 1
            ),
            30,
            "the flood counted",
        )
        wait_cycles(d, 2)
        rejected = {
            r: metric(d, "rebalancerd_telemetry_rejected_total", reason=r) - before[r]
            for r in before
        }
        assert rejected["bad_name"] + rejected["bad_topic"] >= 3, rejected
        st = d.status()
        assert {h["name"] for h in st["hosts"]} == names
        assert all(h["state"] == "active" for h in st["hosts"]), st["hosts"]
        snap = d.control("snapshot")["snapshot"]
        assert [v["name"] for v in snap["vms"]] == [VM], snap["vms"]  # no address-named VM
        assert {h["name"] for h in snap["hosts"]} == names
        assert d.events("telemetry_rejected"), "no log line about the rejected telemetry"

        # the daemon still acts on the real hosts
        d.control("drain", host=h1)
        wait_for(
            lambda: placement(lab, [VM])[VM].running not in ([], [h1]),
            60,
            f"{VM} drained off {h1}",
            interval=0.3,
        )
        wait_for(lambda: not d.status()["in_flight"], 30, "no migration in flight")
        where = assert_each_runs_once(lab, [VM])
        assert [(m["vm"], m["state"], m["target"]) for m in journal.moves()] == [
            (VM, "succeeded", where[VM])
        ]
        d.signal(signal.SIGTERM)
        assert d.wait_exit(60) == 0, d.log_tail()
        watcher.close()

        # -- nothing it read was ever contacted or executed ---------------------------------------
        assert canary.hits == [], canary.hits
        assert watcher.samples > 20
        allowed_remote = {("127.0.0.1", mosquitto_broker.port)}
        for status, laddr, raddr in watcher.inet:
            if status == psutil.CONN_LISTEN:
                assert laddr[1] == d.metrics_port, (status, laddr)
            else:
                assert raddr == () or raddr in allowed_remote or laddr[1] == d.metrics_port, (
                    status,
                    laddr,
                    raddr,
                )
        assert watcher.children == [], watcher.children
    finally:
        if watcher is not None:
            watcher.close()
        d.stop()
        agents.stop()
        canary.close()
