"""Several policy files: how they combine, and problems only visible together."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from rebalancerd.adapters.policy_files import load_policy_dir, load_policy_path
from rebalancerd.policy.combine import PolicySet, combine
from rebalancerd.policy.issues import PolicyError
from rebalancerd.policy.parse import load_policy_text
from rebalancerd.policy.schema import Mode, default_policy

HEAD = "apiVersion: rebalancerd/v1\nkind: Policy\n"
EXAMPLES = Path(__file__).resolve().parents[2] / "policies"


def pol(body: str) -> str:
    return HEAD + body


def write(d: Path, name: str, body: str) -> Path:
    p = d / name
    p.write_text(pol(body))
    return p


def test_empty_set_is_the_default_policy(tmp_path: Path) -> None:
    assert load_policy_dir(tmp_path).effective() == default_policy()
    assert PolicySet().effective() == default_policy()


def test_single_policy_is_itself() -> None:
    p = load_policy_text(pol("name: a\nmode: drain\n"))
    assert combine([p]) is p


def test_highest_priority_decides_mode_targets_and_energy() -> None:
    low = load_policy_text(
        pol("name: low\npriority: 1\nmode: balance\ntargets: {hysteresis: 0.3}\n")
    )
    high = load_policy_text(
        pol("name: high\npriority: 5\nmode: consolidate\nenergy: {min_active_hosts: 4}\n")
    )
    eff = combine([low, high])
    assert eff.mode is Mode.CONSOLIDATE
    assert eff.targets == high.targets  # hysteresis 0.05 of `high`, not 0.3 of `low`
    assert eff.energy.min_active_hosts == 4
    assert eff.priority == 5
    assert eff.name == "high+low"


def test_equal_priority_is_decided_by_name() -> None:
    a = load_policy_text(pol("name: a\nmode: drain\n"))
    b = load_policy_text(pol("name: b\nmode: consolidate\n"))
    assert combine([b, a]).mode is Mode.DRAIN
    assert combine([a, b]).mode is Mode.DRAIN


def test_rules_add_up() -> None:
    a = load_policy_text(
        pol(
            "name: a\nrules:\n  anti_affinity: [{name: g, vms: [x, y]}]\n"
            "  exclusions: [keep]\n  evacuate_degraded: false\npriority: 9\n"
        )
    )
    b = load_policy_text(
        pol(
            "name: b\nrules:\n  pins: [{vm: x, hosts: [h1, h2]}]\n  maintenance: [{host: h3}]\n"
            "  exclusions: [keep, other]\n"
        )
    )
    r = combine([a, b]).rules
    assert [g.name for g in r.anti_affinity] == ["g"]
    assert [p.vm for p in r.pins] == ["x"]
    assert [m.host for m in r.maintenance] == ["h3"]
    assert r.exclusions == ["keep", "other"]
    assert r.evacuate_degraded is False  # from the primary (priority 9)


def test_most_restrictive_limits_win() -> None:
    a = load_policy_text(
        pol(
            "name: a\npriority: 10\nlimits: {max_concurrent: 8, max_per_source: 1, "
            "max_per_cycle: 50, cooldown_s: 60}\n"
        )
    )
    b = load_policy_text(
        pol(
            "name: b\nlimits: {max_concurrent: 3, max_per_source: 2, max_per_target: 0, "
            "max_mib_per_hour: 1000, cooldown_s: 7200}\n"
        )
    )
    lim = combine([a, b]).limits
    assert (lim.max_concurrent, lim.max_per_source, lim.max_per_target) == (3, 1, 0)
    assert lim.max_per_cycle == 10  # b's default 10 < a's 50
    assert lim.max_mib_per_hour == 1000
    assert lim.cooldown_s == 7200


def test_dry_run_if_any_and_scope_union() -> None:
    a = load_policy_text(pol("name: a\npriority: 3\nscope: {vms: ['web-*']}\n"))
    b = load_policy_text(pol("name: b\ndry_run: true\nscope: {vms: ['db-*'], vm_tags: [x]}\n"))
    eff = combine([a, b])
    assert eff.dry_run is True
    assert eff.scope.vms == ["web-*", "db-*"] and eff.scope.vm_tags == ["x"]
    c = load_policy_text(pol("name: c\n"))  # empty scope = everything
    assert combine([a, c]).scope.vms == []


def test_windows_intersect_and_blackouts_add_up() -> None:
    a = load_policy_text(
        pol(
            "name: a\nlimits:\n  windows: [{days: [mon, tue], start: '20:00', end: '06:00'}]\n"
            "  blackouts: [{days: [sun], start: '00:00', end: '01:00'}]\n"
        )
    )
    b = load_policy_text(
        pol(
            "name: b\nlimits:\n  windows: [{start: '00:00', end: '04:00'}, "
            "{start: '21:00', end: '22:00'}]\n"
            "  blackouts: [{days: [sat], start: '12:00', end: '13:00'}]\n"
        )
    )
    lim = combine([a, b]).limits
    got = {(tuple(w.days), w.start, w.end) for w in lim.windows}
    assert got == {
        (("mon", "tue"), "21:00", "22:00"),
        (("tue", "wed"), "00:00", "04:00"),
    }
    assert len(lim.blackouts) == 2


def test_windows_that_never_overlap_are_rejected(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "name: a\nlimits:\n  windows: [{start: '01:00', end: '02:00'}]\n")
    b = write(tmp_path, "b.yaml", "name: b\nlimits:\n  windows: [{start: '03:00', end: '04:00'}]\n")
    with pytest.raises(PolicyError) as ei:
        load_policy_dir(tmp_path)
    (p,) = ei.value.problems
    assert p.file == str(b) and p.line == 5 and "never overlap" in p.message


def test_one_time_zone_for_all_windows(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "name: a\nlimits:\n  blackouts: [{start: '01:00', end: '02:00'}]\n")
    write(
        tmp_path,
        "b.yaml",
        "name: b\nlimits:\n  timezone: Europe/Paris\n  windows: [{start: '03:00', end: '04:00'}]\n",
    )
    with pytest.raises(PolicyError, match="one time zone"):
        load_policy_dir(tmp_path)


def test_duplicate_policy_names(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "name: same\n")
    b = write(tmp_path, "b.yaml", "name: same\n")
    with pytest.raises(PolicyError) as ei:
        load_policy_dir(tmp_path)
    assert [(p.file, p.line) for p in ei.value.problems] == [(str(b), 3)]


def test_contradiction_across_files_is_located_in_the_right_file(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "name: a\nrules:\n  affinity: [{name: t, vms: [x, y]}]\n")
    b = write(tmp_path, "b.yaml", "name: b\nrules:\n  anti_affinity: [{name: u, vms: [x, y]}]\n")
    with pytest.raises(PolicyError) as ei:
        load_policy_dir(tmp_path)
    (p,) = ei.value.problems
    assert p.file == str(b) and p.line == 5 and "'t'" in p.message


def test_every_file_is_checked_and_all_problems_reported(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "name: a\nmode: nope\n")
    write(tmp_path, "b.yml", "name: b\nlimits: {max_concurent: 1}\n")
    write(tmp_path, ".hidden.yaml", "garbage: [\n")
    (tmp_path / "notes.txt").write_text("not a policy")
    with pytest.raises(PolicyError) as ei:
        load_policy_dir(tmp_path)
    assert sorted(Path(p.file).name for p in ei.value.problems) == ["a.yaml", "b.yml"]


def test_examples_load_together() -> None:
    s = load_policy_dir(EXAMPLES)
    assert len(s.policies) == 4
    day = datetime(2026, 12, 2, 12, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    night = datetime(2026, 12, 2, 23, 30, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    by_day, at_night = s.effective(day), s.effective(night)
    # maintenance.yaml has the highest priority but sets no mode: it never decides the mode
    assert by_day.mode is Mode.BALANCE
    assert at_night.mode is Mode.CONSOLIDATE  # consolidate-nightly is scheduled 22:00-06:00
    assert by_day.name == "maintenance+anti-affinity+balance"
    assert at_night.name == "maintenance+consolidate-nightly+anti-affinity+balance"
    for eff in (by_day, at_night):  # every file in force adds its rules
        assert {m.host for m in eff.rules.maintenance} == {"hv03", "hv04"}
        assert [g.name for g in eff.rules.anti_affinity] == ["db-replicas"]
        assert eff.limits.max_per_cycle == 5  # balance.yaml's is the smallest
        assert eff.limits.windows == []
    # schedules ignored (now=None): all four combine, still not drain
    assert s.effective().mode is Mode.CONSOLIDATE


def test_load_policy_path_file_or_dir(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", "name: a\n")
    assert load_policy_path(f).effective().name == "a"
    assert load_policy_path(tmp_path).files == (str(f),)
    with pytest.raises(PolicyError, match="no such directory"):
        load_policy_dir(tmp_path / "missing")
