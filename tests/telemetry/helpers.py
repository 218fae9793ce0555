"""Builders shared by the telemetry tests."""

from __future__ import annotations

import json
from typing import Any

from rebalancerd.telemetry.inventory import Inventory, inventory_from_mapping
from rebalancerd.telemetry.schema import status_topic, telemetry_topic

CLUSTER = "c1"
T0 = 1_767_225_600.0


class ManualClock:
    def __init__(self, start: float = T0) -> None:
        self.t = 0.0
        self.wall0 = start

    def now(self) -> float:
        return self.wall0 + self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)

    def advance(self, s: float) -> None:
        self.t += s


def inventory(
    n: int = 3, cores: int = 16, memory_mib: int = 65536, speed: float = 1.0
) -> Inventory:
    return inventory_from_mapping(
        {
            "hosts": [
                {
                    "name": f"h{i}",
                    "libvirt_uri": f"qemu+tcp://10.0.0.{i}/system",
                    "cores": cores,
                    "memory_mib": memory_mib,
                    "speed": speed,
                    "tags": ["rack-a"] if i % 2 else ["rack-b"],
                }
                for i in range(1, n + 1)
            ]
        }
    )


def vm(name: str, cpu_mc: float = 500.0, **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": name,
        "state": "running",
        "vcpus": 2,
        "memory_mib": 2048,
        "cpu_mc": cpu_mc,
        "memory_used_mib": 1024,
        "dirty_rate_mib_s": 3.5,
    }
    d.update(kw)
    return d


def report(
    host: str,
    seq: int,
    ts: float,
    vms: list[dict[str, Any]] | None = None,
    *,
    boot: int = 1,
    cluster: str = CLUSTER,
    degraded: bool = False,
    libvirt_ok: bool = True,
    **kw: Any,
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "v": 1,
        "kind": "telemetry",
        "cluster": cluster,
        "host": host,
        "boot": boot,
        "seq": seq,
        "ts": ts,
        "interval_s": 10.0,
        "libvirt_ok": libvirt_ok,
        "host_stats": {
            "cores": 16,
            "cpu_pct": 25.0,
            "cpu_per_core_pct": [25.0] * 16,
            "load": [1.0, 1.0, 1.0],
            "mem_total_mib": 65536,
            "mem_available_mib": 30000,
            "pressure": {"cpu_some": 0.5, "memory_some": 0.0, "io_some": 0.1},
            "temp_max_c": 55.0,
        },
        "health": {"degraded": degraded, "reasons": ["temperature 95 C"] if degraded else []},
        "vms": vms if vms is not None else [vm(f"{host}-vm1")],
    }
    d.update(kw)
    return d


def msg(doc: dict[str, Any], host: str | None = None) -> tuple[str, bytes]:
    return telemetry_topic(CLUSTER, host or doc["host"]), json.dumps(doc).encode()


def status(host: str, state: str) -> tuple[str, bytes]:
    body = {"v": 1, "kind": "status", "host": host, "status": state}
    return status_topic(CLUSTER, host), json.dumps(body).encode()
