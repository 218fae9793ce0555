"""The dirty-rate sampler's schedule and read-back (fake domains stand in for QEMU here: this
proves the bookkeeping; tests/lab/test_agent_lab.py proves a real guest gets a measured rate)."""

from __future__ import annotations

from typing import Any

import libvirt

from rebalancerd.adapters.dirty_rate import DirtyRateSampler, DirtyRateSettings


class Dom:
    def __init__(self, fail_modes: bool = False, fail: bool = False) -> None:
        self.calls: list[tuple[int, int]] = []
        self.fail_modes = fail_modes
        self.fail = fail

    def startDirtyRateCalc(self, secs: int, flags: int) -> None:
        self.calls.append((secs, flags))
        if self.fail or (self.fail_modes and flags):
            raise libvirt.libvirtError("unsupported")


def measured(mbps: int, start: float, period: int = 1) -> dict[str, Any]:
    return {
        "dirtyrate.calc_status": 2,
        "dirtyrate.megabytes_per_second": mbps,
        "dirtyrate.calc_start_time": start,
        "dirtyrate.calc_period": period,
    }


def test_bounded_per_interval_unmeasured_and_larger_first() -> None:
    s = DirtyRateSampler(DirtyRateSettings(per_interval=2, calc_seconds=1))
    doms = {n: Dom() for n in ("small", "big", "mid")}
    running = [
        (doms["small"], "small", 512, False),
        (doms["big"], "big", 8192, False),
        (doms["mid"], "mid", 2048, False),
    ]
    s.schedule(running, now_mono=0.0)
    assert [n for n, d in doms.items() if d.calls] == ["big", "mid"]
    s.schedule(running, now_mono=1.0)  # the two are pending: the third gets its turn
    assert doms["small"].calls and len(doms["big"].calls) == 1
    assert s.started_total == 3


def test_unknown_is_null_measured_has_age_and_expires() -> None:
    s = DirtyRateSampler(DirtyRateSettings(max_age_s=60))
    assert s.value("a", 1000.0) == (None, None)
    s.observe("a", {"dirtyrate.calc_status": 1}, 1000.0)  # measuring: nothing yet
    assert s.value("a", 1000.0) == (None, None)
    s.observe("a", measured(0, 995.0), 1000.0)
    assert s.value("a", 1000.0) == (0.0, 4.0)  # a measured 0 is 0, not unknown
    s.observe("a", measured(120, 998.0), 1001.0)
    assert s.value("a", 1001.0) == (120.0, 2.0)
    assert s.value("a", 1100.0) == (None, None)  # older than max_age_s: unknown again


def test_mode_falls_back_to_default_and_a_refusing_guest_backs_off() -> None:
    s = DirtyRateSampler(DirtyRateSettings(calc_mode="dirty-ring", per_interval=5))
    d = Dom(fail_modes=True)
    s.schedule([(d, "a", 1024, False)], 0.0)
    assert [f for _, f in d.calls] == [libvirt.VIR_DOMAIN_DIRTYRATE_MODE_DIRTY_RING, 0]
    bad = Dom(fail=True)
    s.schedule([(bad, "b", 1024, False)], 0.0)
    s.schedule([(bad, "b", 1024, False)], 10.0)  # within its back-off: not asked again
    assert len(bad.calls) == 1 and s.start_errors == 1


def test_disabled_starts_nothing() -> None:
    s = DirtyRateSampler(DirtyRateSettings(enabled=False))
    d = Dom()
    s.schedule([(d, "a", 1024, False)], 0.0)
    assert d.calls == []
