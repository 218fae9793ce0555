"""The fuzz benchmark's generators at a CI-sized count: zero crashes, every input counted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_policy.py"


def load_bench() -> object:
    spec = importlib.util.spec_from_file_location("fuzz_policy_bench", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_fuzz_chunk_has_no_crash_and_counts_everything() -> None:
    bench = load_bench()
    n = 400
    r = bench.run_chunk((7, 0, n))  # type: ignore[attr-defined]
    assert r["crashes"] == []
    assert r["accepted"] + sum(r["rejected"].values()) == n
    assert sum(r["by_source"].values()) == n
    # the generators reach both outcomes and the interesting refusals
    assert r["accepted"] > 0
    for kind in ("yaml_syntax", "unknown_key", "alias_limit", "encoding"):
        assert r["rejected"].get(kind, 0) > 0, r["rejected"]
    assert set(r["by_source"]) >= {"mutated_example", "valid_policy", "bomb", "random_bytes"}


def test_fuzz_hostile_inputs_and_special_files() -> None:
    bench = load_bench()
    r = bench.run_chunk((11, 0, 600))  # type: ignore[attr-defined]
    assert r["crashes"] == [] and r["by_source"].get("hostile", 0) > 0
    special = bench.special_files()  # type: ignore[attr-defined]
    assert special["crashes"] == [] and special["cases"] == 15
