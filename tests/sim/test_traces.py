from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rebalancerd.sim.traces import TraceError, load_trace, read_csv, read_planetlab
from tests.sim.conftest import WriteDay


def test_planetlab_names_sorted_spaces_kept_and_percent_to_fraction(write_day: WriteDay) -> None:
    d = write_day({"zeta": [10, 20, 30], "alpha beta": [50, 0, 99], "mid": [1, 2, 3]})
    tr = read_planetlab(d)
    assert tr.vms == ("alpha beta", "mid", "zeta")
    assert tr.name == "20110303"
    assert tr.interval_s == 300.0
    assert tr.cpu.shape == (3, 3)
    assert tr.cpu[0].tolist() == [0.5, 0.0, 0.99]
    assert tr.cpu[2].tolist() == [0.1, 0.2, 0.3]


def test_planetlab_short_file_repeats_its_last_sample(write_day: WriteDay) -> None:
    tr = read_planetlab(write_day({"a": [10, 20, 30, 40], "b": [5, 7]}))
    assert tr.cpu[1].tolist() == [0.05, 0.07, 0.07, 0.07]


@pytest.mark.parametrize(
    ("content", "message"),
    [("12\nabc\n", ":2: not a number"), ("12\n150\n", "outside 0..100"), ("", "empty file")],
)
def test_planetlab_bad_lines_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    d = tmp_path / "day"
    d.mkdir()
    (d / "vm one").write_text(content)
    with pytest.raises(TraceError, match=message) as e:
        read_planetlab(d)
    assert "\n" not in str(e.value)
    assert "vm one" in str(e.value)


def test_missing_directory_is_a_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="not a directory"):
        read_planetlab(tmp_path / "nope")
    with pytest.raises(TraceError, match="planetlab:DIR or csv:FILE"):
        load_trace(str(tmp_path / "nope"))


def test_interpolation_is_linear_between_samples_and_repeats_the_last(write_day: WriteDay) -> None:
    tr = read_planetlab(write_day({"a": [10, 40, 20]}))
    assert tr.utilisation_at(0.0)[0] == pytest.approx(0.10)
    assert tr.utilisation_at(150.0)[0] == pytest.approx(0.25)
    assert tr.utilisation_at(300.0)[0] == pytest.approx(0.40)
    assert tr.utilisation_at(375.0)[0] == pytest.approx(0.35)
    assert tr.utilisation_at(600.0)[0] == pytest.approx(0.20)
    assert tr.utilisation_at(5000.0)[0] == pytest.approx(0.20)


def test_subset_takes_first_vms_and_hours(write_day: WriteDay) -> None:
    tr = read_planetlab(write_day({f"vm{i}": list(range(24)) for i in range(5)}))
    sub = tr.subset(max_vms=2, hours=1.0)
    assert sub.vms == ("vm0", "vm1")
    assert sub.cpu.shape == (2, 12)
    assert sub.duration_s == 3600.0


def test_csv_buckets_forward_fills_and_reads_memory(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text(
        "timestamp,vm,cpu,memory\n"
        "1000,a,10,512\n"
        "1000,b,50,1024\n"
        "1300,a,20,512\n"
        "1900,a,30,600\n"
        "1950,b,70,2048\n"
    )
    tr = read_csv(p)
    assert tr.vms == ("a", "b")
    assert tr.cpu.shape == (2, 4)
    assert np.allclose(tr.cpu[0], [0.1, 0.2, 0.2, 0.3])
    assert np.allclose(tr.cpu[1], [0.5, 0.5, 0.5, 0.7])
    assert tr.memory_mib is not None
    assert tr.memory_mib[1].tolist() == [1024, 1024, 1024, 2048]
    assert load_trace(f"csv:{p}").vms == ("a", "b")


def test_csv_iso_timestamps(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("timestamp,vm,cpu\n2011-03-03T00:00:00Z,x,5\n2011-03-03T00:05:00Z,x,15\n")
    tr = read_csv(p)
    assert np.allclose(tr.cpu[0], [0.05, 0.15])
    assert tr.memory_mib is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("time,vm,cpu\n1,a,2\n", "header must have"),
        ("timestamp,vm,cpu\n1,a,x\n", ":2: cpu/memory must be numbers"),
        ("timestamp,vm,cpu\n1,a,101\n", "outside 0..100"),
        ("timestamp,vm,cpu\nyesterday,a,1\n", "bad timestamp"),
        ("timestamp,vm,cpu\n1,,1\n", "empty vm name"),
        ("timestamp,vm,cpu\n", "no samples"),
    ],
)
def test_csv_errors_are_one_line(tmp_path: Path, content: str, message: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(TraceError, match=message) as e:
        read_csv(p)
    assert "\n" not in str(e.value)
