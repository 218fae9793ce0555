"""Hostile input files, as a clumsy operator or a fuzzer would hand them over: a FIFO (nobody
writes to it), deep nesting, alias bombs, YAML tags, binary bytes, NaN.

Expected everywhere: one clear error of the loader's own type, at once; never a hang, a
RecursionError or a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from rebalancerd import snapshot as codec
from rebalancerd.adapters.policy_files import parse_policy_file
from rebalancerd.agent import AgentConfigError, load_agent_config
from rebalancerd.daemon.config import ConfigError, load_config
from rebalancerd.files import InputFileError, load_snapshot, read_bounded
from rebalancerd.policy.issues import PolicyError
from rebalancerd.sim.traces import TraceError, read_csv
from rebalancerd.telemetry.inventory import InventoryError, load_inventory

from .helpers import make_fifo, returns_on_fifo

HEAD = "apiVersion: rebalancerd/v1\nkind: Policy\nname: hostile\n"
DEEP_YAML = "x: " + "[" * 5000 + "]" * 5000 + "\n"


def _alias_bomb() -> str:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 10) + "]")
    return "\n".join(lines) + "\n"


# -- FIFO: open() blocks until a writer comes; every reader must refuse it instead -----------
def _policy(p: Path) -> None:
    parsed = parse_policy_file(p)
    if parsed.policy is None:
        raise PolicyError(parsed.problems)


FIFO_READERS = [
    pytest.param(lambda p: read_bounded(p, 1024), InputFileError, id="read_bounded"),
    pytest.param(load_snapshot, codec.SnapshotError, id="snapshot"),
    pytest.param(_policy, PolicyError, id="policy-file"),
    pytest.param(load_config, ConfigError, id="daemon-config"),
    pytest.param(load_agent_config, AgentConfigError, id="agent-config"),
    pytest.param(load_inventory, InventoryError, id="inventory"),
    pytest.param(read_csv, TraceError, id="csv-trace"),
]


@pytest.mark.parametrize(("read", "error"), FIFO_READERS)
def test_a_fifo_is_refused_at_once(tmp_path: Path, read: object, error: type) -> None:
    # Found open in the attack round (now fixed): every reader blocks in open() until someone writes to the FIFO
    # (`rebalancerd plan --snapshot FIFO`, `validate FIFO`, `run --config FIFO --check`,
    # `agent --config FIFO --once`, `simulate --trace csv:FIFO` hang for ever).
    fifo = make_fifo(tmp_path)
    came_back, raised = returns_on_fifo(fifo, read)  # type: ignore[arg-type]
    assert came_back, f"reading a FIFO hangs ({read})"
    assert isinstance(raised, error), raised
    assert "\n" not in str(raised)


# -- nesting, aliases, tags -------------------------------------------------------------------
def test_deeply_nested_daemon_config_is_a_config_error(tmp_path: Path) -> None:
    # Found open in the attack round (now fixed): RecursionError escapes load_config (`run --config F --check` exits 1 with
    # "RecursionError: maximum recursion depth exceeded"; on SIGHUP reload_config does not log
    # config_reload_failed and the policies are not reloaded either).
    f = tmp_path / "rebalancerd.yaml"
    f.write_text(DEEP_YAML)
    with pytest.raises(ConfigError):
        load_config(f)


def test_deeply_nested_agent_config_and_inventory_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "deep.yaml"
    f.write_text(DEEP_YAML)
    with pytest.raises(AgentConfigError, match="nested too deeply"):
        load_agent_config(f)
    with pytest.raises(InventoryError, match="nested too deeply"):
        load_inventory(f)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_alias_bomb(), "aliases"),
        ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper"),
        ("labels: !!python/object/apply:os.system ['true']\n", "unsupported YAML tag"),
        ("targets: {hysteresis: .nan}\n", "finite"),
    ],
    ids=["alias-bomb", "deep", "python-tag", "nan"],
)
def test_hostile_policy_yaml_is_one_located_problem(
    tmp_path: Path, body: str, message: str
) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(HEAD + body)
    parsed = parse_policy_file(f)
    assert parsed.policy is None
    assert any(message in issue.message for issue in parsed.problems), parsed.problems


def test_binary_policy_and_config_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "bin.yaml"
    f.write_bytes(bytes(range(256)) * 8)
    parsed = parse_policy_file(f)
    assert parsed.policy is None and parsed.problems
    with pytest.raises(ConfigError):
        load_config(f)
    with pytest.raises(AgentConfigError):
        load_agent_config(f)


def test_deeply_nested_snapshot_is_a_snapshot_error(tmp_path: Path) -> None:
    f = tmp_path / "s.json"
    f.write_text('{"hosts": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(codec.SnapshotError, match="nested too deeply"):
        load_snapshot(f)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("0,a,10\n300,a,nan\n", "outside 0..100"),
        ("0,a,10\n1e11,a,10\n", "cells"),
        ("0,a,10\n300,a,1e400\n", "outside 0..100"),
        ("inf,a,10\n", "out of range"),
    ],
    ids=["nan-cpu", "far-timestamps", "huge-cpu", "inf-timestamp"],
)
def test_hostile_csv_trace_is_one_line(tmp_path: Path, rows: str, message: str) -> None:
    f = tmp_path / "t.csv"
    f.write_text("timestamp,vm,cpu\n" + rows)
    with pytest.raises(TraceError, match=message) as e:
        read_csv(f)
    assert "\n" not in str(e.value)
