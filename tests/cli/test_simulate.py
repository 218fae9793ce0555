"""`rebalancerd simulate` end to end on small PlanetLab-layout traces."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rebalancerd.cli.main import main
from tests.sim.conftest import WriteDay


def small_day(write_day: WriteDay) -> Path:
    return write_day({f"vm {i}": [(i * 11 + k * 7) % 90 for k in range(24)] for i in range(6)})


def test_json_summary_has_the_benchmark_metrics(
    write_day: WriteDay, capsys: pytest.CaptureFixture[str]
) -> None:
    d = small_day(write_day)
    rc = main(
        ["simulate", "--trace", f"planetlab:{d}", "--decider", "none", "--hosts", "6", "--json"]
    )
    assert rc == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    for k in (
        "energy_kwh",
        "slatah",
        "pdm",
        "slav",
        "esv",
        "migrations",
        "migrations_per_vm_day",
        "bytes_moved",
        "peak_concurrent_migrations",
    ):
        assert k in doc
    assert doc["vms"] == 6 and doc["migrations"] == 0 and doc["energy_kwh"] > 0
    assert "[" not in err  # no progress bar when not on a TTY


def test_report_is_self_contained_html(
    write_day: WriteDay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = small_day(write_day)
    rep = tmp_path / "r.html"
    rc = main(
        [
            "simulate",
            "--trace",
            f"planetlab:{d}",
            "--decider",
            "none",
            "--hosts",
            "6",
            "--report",
            str(rep),
        ]
    )
    assert rc == 0
    text = rep.read_text()
    assert text.count("<svg") == 4
    assert "Active hosts" in text and "Power" in text and "Overloaded" in text
    # no external assets: the only URL is the SVG namespace
    urls = set(re.findall(r"https?://[^\"' ]+", text))
    assert urls == {"http://www.w3.org/2000/svg"}
    assert "<script" not in text and "<link" not in text
    for svg in re.findall(r"<svg.*?</svg>", text, re.S):
        ET.fromstring(svg)  # well-formed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trace", "planetlab:/nonexistent/day"], "not a directory"),
        (["--trace", "bogus"], "planetlab:DIR or csv:FILE"),
        (["--trace", "planetlab:/tmp", "--report", "x.pdf"], "only .html"),
        (["--trace", "planetlab:/tmp", "--hosts", "0"], "--hosts"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert message in err


def test_policy_file_overrides_the_default(
    write_day: WriteDay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = small_day(write_day)
    pol = tmp_path / "p.yaml"
    pol.write_text("apiVersion: rebalancerd/v1\nkind: Policy\nname: mine\nmode: consolidate\n")
    rc = main(
        [
            "simulate",
            "--trace",
            f"planetlab:{d}",
            "--decider",
            "none",
            "--hosts",
            "6",
            "--policy",
            str(pol),
        ]
    )
    assert rc == 0
    assert "policy mine" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: rebalancerd/v1\nkind: Policy\nmode: sideways\n")
    assert main(["simulate", "--trace", f"planetlab:{d}", "--policy", str(bad)]) == 2


def test_csv_trace_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "load.csv"
    rows = ["timestamp,vm,cpu,memory"]
    for k in range(12):
        for v in ("web-1", "web-2", "db"):
            rows.append(f"{k * 300},{v},{(k * 9 + len(v) * 7) % 80},1024")
    p.write_text("\n".join(rows) + "\n")
    rc = main(["simulate", "--trace", f"csv:{p}", "--decider", "none", "--hosts", "4", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["vms"] == 3
    assert doc["duration_s"] == 3600
    assert doc["energy_kwh"] > 0
