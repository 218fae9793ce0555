"""CloudSim's metric arithmetic on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from rebalancerd.sim.metrics import FloatArray, MetricsAccumulator


def linear_power(u: FloatArray) -> FloatArray:
    """100 W idle, 200 W at full load: easy to compute by hand."""
    out: FloatArray = 100.0 + 100.0 * u
    return out


def acc2() -> MetricsAccumulator:
    return MetricsAccumulator(power_of=linear_power, total_mips=np.array([1000.0, 1000.0]))


def rec(
    a: MetricsAccumulator,
    t: float,
    used: list[float],
    req: list[float],
    valloc: list[float],
    vreq: list[float],
    vmig: list[bool],
) -> None:
    a.record(t, np.array(used), np.array(req), np.array(valloc), np.array(vreq), np.array(vmig))


def feed(a: MetricsAccumulator) -> None:
    rec(a, 0, [500, 0], [500, 0], [500], [500], [False])
    rec(a, 100, [1000, 0], [1200, 0], [900], [1000], [True])
    rec(a, 300, [1000, 200], [1000, 200], [1000], [1000], [False])
    rec(a, 400, [1000, 200], [1000, 200], [1000], [1000], [False])


def test_energy_is_trapezoid_per_span_and_zero_while_a_host_was_off() -> None:
    a = acc2()
    feed(a)
    # host0: (150+200)/2*100 + 200*200 + 200*100 ; host1: off until 300, then 120 W * 100 s
    joules = 17_500 + 40_000 + 20_000 + 12_000
    assert a.energy_j == pytest.approx(joules)
    assert a.energy_kwh == pytest.approx(joules / 3.6e6)


def test_slatah_is_violation_time_over_active_time_summed_over_hosts() -> None:
    a = acc2()
    feed(a)
    assert a.active_time_s == pytest.approx(400 + 100)
    assert a.violation_time_s == pytest.approx(200)
    assert a.slatah == pytest.approx(200 / 500)


def test_pdm_counts_only_shortfall_while_in_migration() -> None:
    a = acc2()
    feed(a)
    requested = 500 * 100 + 1000 * 200 + 1000 * 100
    assert a.pdm == pytest.approx(100 * 200 / requested)
    assert a.slav == pytest.approx(0.4 * 100 * 200 / requested)
    assert a.esv == pytest.approx(a.energy_kwh * a.slav)
    s = a.summary(n_vms=1, duration_s=400)
    assert s["overall_sla_shortfall"] == pytest.approx((requested - 330_000) / requested)
    assert s["slatah"] == a.slatah and s["pdm"] == a.pdm


def test_shortfall_outside_migration_is_not_pdm() -> None:
    a = acc2()
    rec(a, 0, [800, 0], [1000, 0], [800], [1000], [False])
    rec(a, 300, [800, 0], [1000, 0], [800], [1000], [False])
    assert a.pdm == 0.0
    assert a.slatah == 1.0
    assert a.slav == 0.0


def test_a_second_record_at_the_same_time_replaces_the_first() -> None:
    a, b = acc2(), acc2()
    feed(a)
    rec(b, 0, [999, 999], [1, 1], [1], [5000], [True])  # replaced below
    feed(b)
    assert b.energy_j == pytest.approx(a.energy_j)
    assert b.slatah == pytest.approx(a.slatah)
    assert b.pdm == pytest.approx(a.pdm)


def test_rounding_below_requested_is_not_a_violation() -> None:
    a = acc2()
    r = 1234.567
    rec(a, 0, [0.9 * r / 0.9 * (1 - 1e-15), 0], [r, 0], [r], [r], [False])
    rec(a, 300, [r, 0], [r, 0], [r], [r], [False])
    assert a.violation_time_s == 0.0


def test_records_must_go_forward_in_time() -> None:
    a = acc2()
    rec(a, 10, [1, 0], [1, 0], [1], [1], [False])
    with pytest.raises(ValueError, match="time order"):
        rec(a, 5, [1, 0], [1, 0], [1], [1], [False])


def test_empty_run_reports_zeros() -> None:
    s = acc2().summary(n_vms=0, duration_s=0)
    assert s["energy_kwh"] == 0 and s["slatah"] == 0 and s["pdm"] == 0
    assert s["migrations_per_vm_day"] == 0
