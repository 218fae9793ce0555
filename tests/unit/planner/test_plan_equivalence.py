"""Plans stay identical: each small reference case in tests/data/plan_hashes.json (at most
32 hosts, and every example/* case) is planned again and hashed with scripts/plan_hashes.py; a
change that alters any of these plans fails here. (The larger cases: run the script with
--check.)"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from rebalancerd.domain.model import ClusterSnapshot
from rebalancerd.policy.schema import Policy

REPO = Path(__file__).resolve().parents[3]
RECORDED = REPO / "tests" / "data" / "plan_hashes.json"
MAX_HOSTS = 32


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "plan_hashes", REPO / "scripts" / "plan_hashes.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plan_hashes = _load_script()
RECORDED_HASHES: dict[str, dict[str, object]] = json.loads(RECORDED.read_text())
CASES: list[tuple[str, ClusterSnapshot, Policy]] = list(plan_hashes.cases(MAX_HOSTS))


def _small(name: str) -> bool:
    size = name.split("/", 1)[0]
    return name.startswith("example/") or int(size.split("x")[0]) <= MAX_HOSTS


def test_every_small_recorded_case_is_checked() -> None:
    small = {name for name in RECORDED_HASHES if _small(name)}
    assert len(small) >= 20
    assert {name for name, _, _ in CASES} == small


@pytest.mark.parametrize(("name", "snap", "policy"), CASES, ids=[c[0] for c in CASES])
def test_plan_hash_is_unchanged(name: str, snap: ClusterSnapshot, policy: Policy) -> None:
    digest, migrations = plan_hashes.plan_digest(snap, policy)
    assert {"hash": digest, "migrations": migrations} == RECORDED_HASHES[name]
