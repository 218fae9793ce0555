"""Scheduled policies: which policies are in force at a time, and the precedence among them."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from rebalancerd.policy.combine import PolicySet
from rebalancerd.policy.issues import PolicyError
from rebalancerd.policy.parse import load_policy_text
from rebalancerd.policy.schedule import NOTHING_SCHEDULED, in_force, next_change
from rebalancerd.policy.schema import Mode

PARIS = ZoneInfo("Europe/Paris")

NIGHT = """apiVersion: rebalancerd/v1
kind: Policy
name: night
priority: 10
mode: consolidate
schedule:
  windows: [{days: [fri], start: "22:00", end: "06:00"}]
  timezone: Europe/Paris
limits: {cooldown_s: 7200}
"""
BALANCE = """apiVersion: rebalancerd/v1
kind: Policy
name: day
mode: balance
"""
MAINT = """apiVersion: rebalancerd/v1
kind: Policy
name: maint
priority: 100
rules:
  maintenance: [{host: hv03}]
"""


def at(y: int, mo: int, d: int, h: int, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=PARIS).timestamp()


# 2026-12-04 is a Friday
FRI_2130, FRI_2200, SAT_0559, SAT_0600 = (
    at(2026, 12, 4, 21, 30),
    at(2026, 12, 4, 22),
    at(2026, 12, 5, 5, 59),
    at(2026, 12, 5, 6),
)


def test_schedule_window_wraps_past_midnight_in_its_time_zone() -> None:
    night = load_policy_text(NIGHT)
    assert [in_force(night, t) for t in (FRI_2130, FRI_2200, SAT_0559, SAT_0600)] == [
        False,
        True,
        True,
        False,
    ]
    # the same instant in UTC is one hour earlier in December: 21:00Z is 22:00 Paris
    assert in_force(night, datetime(2026, 12, 4, 21, 0, tzinfo=ZoneInfo("UTC")).timestamp())


def test_scheduled_policy_decides_only_inside_its_window() -> None:
    s = PolicySet((load_policy_text(NIGHT), load_policy_text(BALANCE)))
    day, night = s.effective(FRI_2130), s.effective(FRI_2200)
    assert (day.name, day.mode) == ("day", Mode.BALANCE)
    assert (night.name, night.mode) == ("night+day", Mode.CONSOLIDATE)
    # outside its schedule none of its limits count either
    assert day.limits.cooldown_s == 3600 and night.limits.cooldown_s == 7200


def test_policy_without_mode_never_decides_the_mode() -> None:
    s = PolicySet((load_policy_text(MAINT), load_policy_text(BALANCE), load_policy_text(NIGHT)))
    eff = s.effective(FRI_2200)
    assert eff.mode is Mode.CONSOLIDATE and eff.name == "maint+night+day"
    assert [m.host for m in eff.rules.maintenance] == ["hv03"]  # its rules still add up
    assert s.effective(FRI_2130).mode is Mode.BALANCE
    # alone, a mode-less policy is what it is (the default mode)
    assert PolicySet((load_policy_text(MAINT),)).effective(FRI_2130).mode is Mode.BALANCE


def test_nothing_scheduled_is_advisory() -> None:
    s = PolicySet((load_policy_text(NIGHT),))
    assert s.effective(FRI_2130) is NOTHING_SCHEDULED
    assert NOTHING_SCHEDULED.mode is Mode.ADVISORY
    assert s.effective(FRI_2200).name == "night"


def test_next_change_is_the_schedule_edge() -> None:
    s = (load_policy_text(NIGHT), load_policy_text(BALANCE))
    assert next_change(s, FRI_2130) == FRI_2200
    assert next_change(s, FRI_2200) == SAT_0600
    assert next_change((load_policy_text(BALANCE),), FRI_2130) is None


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("schedule: {windows: []}", "at least 1 item"),
        ('schedule: {windows: [{start: "25:00"}]}', "must be HH:MM"),
        ('schedule: {windows: [{start: "22:00"}], timezone: Mars/Olympus}', "unknown time zone"),
        ("schedule: {timezone: UTC}", "windows"),
    ],
)
def test_bad_schedule_is_one_located_error(schedule: str, message: str) -> None:
    with pytest.raises(PolicyError) as ei:
        load_policy_text(f"apiVersion: rebalancerd/v1\nkind: Policy\n{schedule}\n", "p.yaml")
    assert len(ei.value.problems) == 1
    assert message in str(ei.value.problems[0]) and str(ei.value.problems[0]).startswith(
        "p.yaml:3:"
    )
