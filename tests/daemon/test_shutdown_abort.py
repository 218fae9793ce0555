"""SIGTERM past the shutdown deadline: the daemon asks the executor to abort the migrations in
flight (only the executor acts on hypervisors); the VM stays on its source."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rebalancerd.adapters.systemd import NullNotifier
from rebalancerd.daemon.config import parse
from rebalancerd.daemon.daemon import Daemon
from rebalancerd.daemon.wiring import SimulatedParts
from rebalancerd.domain.model import ClusterSnapshot, Host, Vm
from rebalancerd.files import dump_snapshot as dump


async def _until(pred: Any, timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_shutdown_deadline_aborts_through_the_executor(tmp_path: Path) -> None:
    hosts = tuple(Host(f"big{i}", cores=32, memory_mib=256 * 1024) for i in (1, 2, 3))
    vms = (
        Vm("huge", "big1", vcpus=4, memory_mib=200 * 1024, cpu_used_mc=500),
        Vm("small", "big2", vcpus=1, memory_mib=1024, cpu_used_mc=100),
    )
    dump(ClusterSnapshot(hosts, vms), tmp_path / "snap.json")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(
        "apiVersion: rebalancerd/v1\nkind: Policy\nmode: balance\nlimits: {cooldown_s: 0}\n"
    )
    cfg = parse(
        {
            "simulate": True,
            "sim": {"snapshot": str(tmp_path / "snap.json"), "speed": 1.0},
            "state_dir": str(tmp_path / "state"),
            "policy_dir": str(tmp_path / "policies"),
            "metrics": {"enabled": False},
            "control": {"socket": str(tmp_path / "ctl.sock")},
            "intervals": {"plan_s": 5.0, "max_data_age_s": 60.0},
            "planner": {"time_limit_s": 1.0},
            "shutdown_deadline_s": 0.5,
        }
    )
    daemon = Daemon(cfg, notifier=NullNotifier())
    runner = asyncio.create_task(daemon.run())
    try:
        await _until(lambda: hasattr(daemon, "parts") and daemon.phase == "running", 30, "start")
        parts = daemon.parts
        assert isinstance(parts, SimulatedParts)
        executor = parts.executor
        asked: list[str] = []
        real_abort_all = executor.abort_all

        async def abort_all(reason: str) -> list[str]:
            asked.append(reason)
            return await real_abort_all(reason)

        executor.abort_all = abort_all  # type: ignore[method-assign]
        out = await parts.control.handlers["drain"]({"host": "big1"})
        assert out["drained"] is True
        await _until(lambda: executor.in_flight(), 30, "a migration in flight")
        daemon.request_stop()
        assert await asyncio.wait_for(runner, 60) == 0
        assert asked == ["shutdown deadline"]
        assert parts.cluster.placement()["huge"] == "big1"
        assert not executor.in_flight()
    finally:
        daemon.request_stop()
        if not runner.done():
            await asyncio.wait_for(runner, 60)
