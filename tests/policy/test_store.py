"""Atomic reload: all files valid -> new set; any invalid -> old set stays, logged, metric 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.daemon.policy_source import FALLBACK, PolicyStore, ReloadResult
from rebalancerd.observability import MemoryMetrics
from rebalancerd.policy.schema import Mode, default_policy

HEAD = "apiVersion: rebalancerd/v1\nkind: Policy\n"


class RecordingLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append(("info", event, kw))

    def error(self, event: str, **kw: Any) -> None:
        self.events.append(("error", event, kw))


def make(d: Path) -> tuple[PolicyStore, MemoryMetrics, RecordingLog, VirtualClock]:
    m, log, clock = MemoryMetrics(), RecordingLog(), VirtualClock(start=1_800_000_000.0)
    return PolicyStore(d, m, clock, log=log), m, log, clock


def test_valid_directory_is_loaded_and_reported(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(HEAD + "name: a\nmode: consolidate\n")
    store, m, log, _ = make(tmp_path)
    assert store.current().mode is Mode.CONSOLIDATE
    assert store() is store.current()
    assert store.healthy
    assert m.gauge("policy_reload_success") == 1.0
    assert m.gauge("policy_reload_timestamp_seconds") == 1_800_000_000.0
    assert m.total("policy_reloads_total", result="ok") == 1
    assert log.events[-1][1] == "policy_reloaded"


def test_invalid_change_keeps_the_old_policy(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text(HEAD + "name: a\nmode: drain\n")
    store, m, log, clock = make(tmp_path)
    before = store.current()
    clock.advance(30)
    f.write_text(HEAD + "name: a\nmode: consolidate\nlimits: {max_concurent: 1}\n")
    r = store.reload()
    assert not r.ok and not r.changed
    assert store.current() is before and store.current().mode is Mode.DRAIN
    assert r.policy is before
    assert [p.line for p in r.problems] == [5]
    assert m.gauge("policy_reload_success") == 0.0
    assert m.gauge("policy_reload_timestamp_seconds") == 1_800_000_030.0
    assert m.total("policy_reloads_total", result="error") == 1
    level, event, kw = log.events[-1]
    assert (level, event) == ("error", "policy_reload_failed")
    assert kw["problems"][0].startswith(f"{f}:5:")
    assert not store.healthy


def test_one_bad_file_blocks_the_whole_set(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(HEAD + "name: a\nmode: drain\n")
    store, *_ = make(tmp_path)
    (tmp_path / "b.yaml").write_text(HEAD + "name: b\npriority: 50\nmode: consolidate\n")
    (tmp_path / "c.yaml").write_text(HEAD + "name: c\nmode: [\n")
    r = store.reload()
    assert not r.ok
    assert store.current().mode is Mode.DRAIN  # b's valid change did not sneak in
    (tmp_path / "c.yaml").unlink()
    r = store.reload()
    assert r.ok and r.changed and store.current().mode is Mode.CONSOLIDATE
    assert store.policy_set is not None and len(store.policy_set.policies) == 2


def test_valid_change_applies_and_unchanged_reload_says_so(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text(HEAD + "name: a\n")
    store, m, *_ = make(tmp_path)
    f.write_text(HEAD + "name: a\nlimits: {max_concurrent: 7}\n")
    r = store.reload()
    assert r.ok and r.changed and store.current().limits.max_concurrent == 7
    r2 = store.reload()
    assert r2.ok and not r2.changed
    assert m.total("policy_reloads_total", result="ok") == 3


def test_broken_at_start_uses_a_policy_that_never_acts(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("this: is: not yaml\n")
    store, m, *_ = make(tmp_path)
    assert store.current() is FALLBACK
    assert FALLBACK.mode is Mode.ADVISORY and FALLBACK.dry_run
    assert m.gauge("policy_reload_success") == 0.0
    (tmp_path / "a.yaml").write_text(HEAD + "name: a\n")
    assert store.reload().ok and store.current().name == "a"


def test_missing_directory_is_an_error_not_a_crash(tmp_path: Path) -> None:
    store, _m, *_ = make(tmp_path / "nope")
    assert store.current() is FALLBACK
    assert store.last_result is not None and "no such directory" in store.last_result.summary()


def test_empty_directory_is_the_default_policy(tmp_path: Path) -> None:
    store, *_ = make(tmp_path)
    assert store.current() == default_policy()


def test_listeners_see_every_attempt_and_cannot_break_reload(tmp_path: Path) -> None:
    store, _, log, _ = make(tmp_path)
    seen: list[ReloadResult] = []
    store.add_listener(seen.append)
    store.add_listener(lambda r: 1 / 0)  # type: ignore[func-returns-value]
    (tmp_path / "a.yaml").write_text("x")
    assert not store.reload().ok
    assert len(seen) == 1 and not seen[0].ok
    assert any(e[1] == "policy_listener_failed" for e in log.events)


def test_directory_turning_empty_keeps_the_last_policy(tmp_path: Path) -> None:
    # `rm *.yaml && cp ...`: between the two the directory is empty. The built-in default
    # (balance, no exclusions) took effect then and migrated VMs an advisory policy held.
    f = tmp_path / "a.yaml"
    f.write_text(HEAD + "name: hold\nmode: advisory\nrules: {exclusions: ['*']}\n")
    store, m, log, clock = make(tmp_path)
    held = store.current()
    f.unlink()
    clock.advance(5)
    r = store.reload()
    assert store.current() is held and held.mode is Mode.ADVISORY
    assert not r.ok and r.kept_on_empty and r.policy is held
    assert "empty" in r.summary() and "hold" in r.summary()
    assert m.gauge("policy_dir_empty") == 1.0
    assert m.gauge("policy_reload_success") == 0.0
    assert m.total("policy_reloads_total", result="empty") == 1
    level, event, kw = log.events[-1]
    assert (level, event, kw["keeping"]) == ("error", "policy_dir_empty_kept", "hold")
    f.write_text(HEAD + "name: back\nmode: advisory\n")
    r = store.reload()
    assert r.ok and store.current().name == "back"
    assert m.gauge("policy_dir_empty") == 0.0


def test_empty_directory_at_start_says_the_default_is_in_force(tmp_path: Path) -> None:
    store, _m, log, _ = make(tmp_path)
    assert store.current() == default_policy()
    assert [e[1] for e in log.events] == ["policy_default_in_force", "policy_reloaded"]
    assert "may migrate" in log.events[0][2]["detail"]
    store.reload()  # said once, at the first load
    assert [e[1] for e in log.events].count("policy_default_in_force") == 1


def test_scheduled_policy_switches_with_the_clock(tmp_path: Path) -> None:
    # 1_800_000_000 is 2027-01-15 08:00 UTC (a Friday); night: 20:00-06:00 UTC
    (tmp_path / "day.yaml").write_text(HEAD + "name: day\nmode: balance\n")
    (tmp_path / "night.yaml").write_text(
        HEAD + "name: night\npriority: 5\nmode: consolidate\n"
        'schedule: {windows: [{start: "20:00", end: "06:00"}]}\n'
    )
    store, m, log, clock = make(tmp_path)
    assert store.current().name == "day" and store.current().mode is Mode.BALANCE
    assert m.gauge("policy_scheduled_in_force", policy="night") == 0.0
    assert m.gauge("policy_scheduled_in_force", policy="day") == 1.0
    clock.advance(12 * 3600)  # 20:00 UTC
    assert store.current().name == "night+day" and store.current().mode is Mode.CONSOLIDATE
    assert m.gauge("policy_scheduled_in_force", policy="night") == 1.0
    changes = [kw for _, e, kw in log.events if e == "policy_schedule_changed"]
    assert changes[-1]["in_force"] == ["day", "night"] and changes[-1]["before"] == ["day"]
    n = len(changes)
    store.current()
    assert len([e for _, e, _ in log.events if e == "policy_schedule_changed"]) == n  # no repeat
    clock.advance(10 * 3600)  # 06:00 UTC the next day
    assert store.current().mode is Mode.BALANCE
    # a reload recomputes at once
    (tmp_path / "day.yaml").write_text(HEAD + "name: day\nmode: drain\n")
    assert store.reload().ok
    assert store.current().mode is Mode.DRAIN
