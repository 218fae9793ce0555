from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rebalancerd import snapshot
from rebalancerd.domain.model import HostState
from rebalancerd.files import load_snapshot
from rebalancerd.snapshot import SnapshotError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "snapshot-small.json"


def minimal() -> dict[str, object]:
    return {
        "version": 1,
        "hosts": [{"name": "h1", "cores": 4, "memory_mib": 8192}],
        "vms": [{"name": "v1", "host": "h1", "vcpus": 2, "memory_mib": 2048, "cpu_used": 1.5}],
    }


def test_minimal_snapshot_loads_with_units_converted() -> None:
    s = snapshot.loads(json.dumps(minimal()))
    assert s.host("h1").cpu_capacity_mc == 4000
    assert s.vm("v1").cpu_used_mc == 1500
    assert s.host("h1").state is HostState.ACTIVE


def test_example_round_trips() -> None:
    s = load_snapshot(EXAMPLE)
    again = snapshot.loads(snapshot.dumps(s))
    assert again == s
    assert {g.name for g in s.rules.groups} == {"db-replicas"}
    assert s.rules.exclusions == {"latency-critical"}
    assert s.host("hv04").state is HostState.MAINTENANCE


def test_committed_json_schema_is_in_sync() -> None:
    committed = json.loads(snapshot.schema_path().read_text())
    assert committed == json.loads(json.dumps(snapshot.json_schema(), sort_keys=True)), (
        "regenerate rebalancerd/schemas/snapshot-v1.json (see docs/snapshot.md)"
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=2), "unsupported snapshot version 2"),
        (lambda d: d.pop("hosts"), "hosts: Field required"),
        (lambda d: d["hosts"][0].update(cores=-1), "hosts.0.cores"),
        (lambda d: d["hosts"][0].update(colour="red"), "hosts.0.colour: Extra inputs"),
        (lambda d: d["vms"][0].update(host="nowhere"), "unknown host 'nowhere'"),
        (lambda d: d["vms"][0].update(cpu_used="lots"), "vms.0.cpu_used"),
        (lambda d: d["hosts"][0].update(state="exploded"), "hosts.0.state"),
        (lambda d: d["vms"].append(dict(d["vms"][0])), "duplicate vm names: v1"),
    ],
)
def test_bad_snapshots_give_one_line_errors(mutate: object, message: str) -> None:
    d = minimal()
    mutate(d)  # type: ignore[operator]
    with pytest.raises(SnapshotError) as e:
        snapshot.loads(json.dumps(d), "x.json")
    text = str(e.value)
    assert message in text and text.startswith("x.json: ") and "\n" not in text


@pytest.mark.parametrize("text", ["", "{", "[1,2]", '{"version": 1, "hosts": NaN}', "\xff\xfe"])
def test_malformed_json(text: str) -> None:
    with pytest.raises(SnapshotError):
        snapshot.loads(text)


def test_missing_and_directory_paths(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="no such file"):
        load_snapshot(tmp_path / "nope.json")
    with pytest.raises(SnapshotError, match="is a directory"):
        load_snapshot(tmp_path)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=20,
    )
)
def test_any_json_value_is_loaded_or_rejected_cleanly(value: object) -> None:
    try:
        text = json.dumps(value)
    except ValueError:
        return
    try:
        snapshot.loads(text)
    except SnapshotError as e:
        assert "\n" not in str(e)
