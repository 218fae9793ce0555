"""Operator intent as a pure overlay over a snapshot, and its file drained.json."""

from __future__ import annotations

from pathlib import Path

from rebalancerd.daemon.intent import (
    MOVE_BACK_WEIGHT,
    Drain,
    DrainFile,
    Intent,
    MoveBack,
    apply_intent,
    finished_move_backs,
)
from rebalancerd.domain.model import ClusterSnapshot, Host, HostState, Vm


def snapshot() -> ClusterSnapshot:
    hosts = (
        Host("a", cores=8, memory_mib=16384),
        Host("b", cores=8, memory_mib=16384),
        Host("c", cores=8, memory_mib=16384, state=HostState.STALE),
    )
    vms = (Vm("v1", "b", vcpus=1, memory_mib=1024), Vm("v2", "a", vcpus=1, memory_mib=1024))
    return ClusterSnapshot(hosts, vms)


def test_no_intent_leaves_the_snapshot_alone() -> None:
    snap = snapshot()
    assert apply_intent(snap, Intent(), now=0.0) is snap


def test_drained_hosts_go_to_maintenance_but_stale_stays_stale() -> None:
    intent = Intent(drained={"a": Drain(1.0), "c": Drain(1.0)})
    out = apply_intent(snapshot(), intent, now=0.0)
    states = {h.name: h.state for h in out.hosts}
    assert states == {"a": HostState.MAINTENANCE, "b": HostState.ACTIVE, "c": HostState.STALE}


def test_move_back_pins_vms_home_until_their_deadline() -> None:
    intent = Intent(
        move_back={
            "v1": MoveBack("a", until=100.0),  # away from home: pinned
            "v2": MoveBack("a", until=100.0),  # already home: no pin
            "gone": MoveBack("a", until=100.0),  # not in the snapshot
        }
    )
    out = apply_intent(snapshot(), intent, now=50.0)
    pins = [(p.vm, set(p.hosts), p.hard, p.weight) for p in out.rules.pins]
    assert pins == [("v1", {"a"}, False, MOVE_BACK_WEIGHT)]
    assert not apply_intent(snapshot(), intent, now=150.0).rules.pins
    assert finished_move_backs(intent, {"v1": "b", "v2": "a"}, now=50.0) == ["v2"]
    assert sorted(finished_move_backs(intent, {"v1": "b"}, now=150.0)) == ["gone", "v1", "v2"]


def test_drain_file_round_trip_and_damage(tmp_path: Path) -> None:
    f = DrainFile(str(tmp_path))
    assert f.load() == (Intent(), False)  # no file yet
    intent = Intent(drained={"a": Drain(5.0, {"v2": "a"})}, move_back={"v1": MoveBack("b", 9.0)})
    assert f.save(intent) is None
    assert f.load() == (intent, True)
    f.path.write_text('{"drained": {"a": {"since": "soon"}}}')
    loaded, whole = f.load()
    assert not whole and loaded.drained == {}
    missing = DrainFile(str(tmp_path / "nope"))
    assert missing.save(intent) is not None  # the directory does not exist: a warning


def test_drain_file_drops_bad_entries_keeps_the_rest(tmp_path: Path) -> None:
    from rebalancerd.observability import MemoryMetrics

    f = DrainFile(str(tmp_path))
    f.path.write_text(
        '{"drained": {"a": {"since": NaN, "vms": {}}, "b": {"since": 3.0, "vms": {"v": "b"}},'
        ' "c": {"since": Infinity}, "d": {"since": true}, "e": "x"},'
        ' "move_back": {"v1": {"home": "b", "until": -Infinity}, "v2": {"home": "a", "until": 9}}}'
    )
    metrics = MemoryMetrics()
    loaded, whole = f.load(metrics)
    assert not whole
    assert loaded.drained == {"b": Drain(3.0, {"v": "b"})}
    assert loaded.move_back == {"v2": MoveBack("a", 9.0)}
    assert metrics.total("drain_state_entries_dropped_total", section="drained") == 4
    assert metrics.total("drain_state_entries_dropped_total", section="move_back") == 1


def test_drain_file_special_files_are_not_read(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "drained.json")
    assert DrainFile(str(tmp_path)).load() == (Intent(), False)
