"""The loop plans early when a host turns into a hotspot between planning intervals."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rebalancerd.adapters.systemd import NullNotifier
from rebalancerd.daemon.config import parse
from rebalancerd.daemon.daemon import Daemon
from rebalancerd.daemon.wiring import SimulatedParts
from rebalancerd.sim.cluster import LoadModel


async def _until(pred: Any, timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_hotspot_wakes_the_loop_before_the_interval(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(
        "apiVersion: rebalancerd/v1\nkind: Policy\nmode: balance\n"
        "targets: {weights: {cpu: 1, memory: 0}, high_watermark: 0.8}\n"
        "limits: {cooldown_s: 0}\n"
    )
    cfg = parse(
        {
            "simulate": True,
            "sim": {"hosts": 3, "vms_per_host": 3, "speed": 10.0, "seed": 1},
            "state_dir": str(tmp_path / "state"),
            "policy_dir": str(tmp_path / "policies"),
            "metrics": {"enabled": False},
            "control": {"socket": str(tmp_path / "ctl.sock")},
            # one cycle a day: any second cycle in this test comes from the hotspot wake-up
            "intervals": {"plan_s": 86400, "max_data_age_s": 600},
            "planner": {"time_limit_s": 1.0},
        }
    )
    daemon = Daemon(cfg, notifier=NullNotifier())
    runner = asyncio.create_task(daemon.run())
    try:
        await _until(
            lambda: hasattr(daemon, "parts") and daemon.parts.loop.state.cycles >= 1, 30, "cycle 1"
        )
        parts = daemon.parts
        assert isinstance(parts, SimulatedParts)
        await _until(lambda: not parts.loop.busy, 30, "cycle 1 done")
        assert daemon.hot_hosts() == set()
        cycles = parts.loop.state.cycles
        # the VMs of the busiest host surge to 6 cores each (16-core hosts)
        where = parts.cluster.placement()
        counts: dict[str, int] = {}
        for h in where.values():
            counts[h] = counts.get(h, 0) + 1
        hot = max(sorted(counts), key=lambda h: counts[h])
        for name, h in where.items():
            if h == hot:
                parts.cluster.vms[name].load = LoadModel(base_mc=6000, amplitude=0.0)
        await _until(
            lambda: any(d["cycle"] > cycles for d in daemon.decisions), 60, "an early cycle"
        )
        early = [d for d in daemon.decisions if d["cycle"] > cycles]
        moved_off = [m for d in early for m in d.get("moves", []) if m["source"] == hot]
        assert moved_off, f"the early cycle did not plan to relieve the hotspot: {early}"
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(runner, 30) == 0
