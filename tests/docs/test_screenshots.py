"""Issue 20: the simulate report, the Grafana dashboard and the demo rendered by headless
Chromium, kept as test artefacts (in $REBALANCERD_ARTEFACTS, else the test's tmp dir), and the
report's chart axis rules."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import pytest

from rebalancerd.sim.report import _nice_max, _nice_step, axis_top, svg_chart

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import screenshots  # noqa: E402


def png_size(p: Path) -> tuple[int, int]:
    head = p.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", p
    w, h = struct.unpack(">II", head[16:24])
    return w, h


@pytest.mark.slow
def test_screenshots_of_report_dashboard_and_demo(tmp_path: Path) -> None:
    if screenshots.chromium() is None:
        pytest.skip("chromium not installed (CI installs it from scripts/system-packages.txt)")
    out = Path(os.environ.get("REBALANCERD_ARTEFACTS", tmp_path)) / "screenshots"
    trace = screenshots.DEFAULT_TRACE
    if not trace.is_dir():  # a clone without the shared PlanetLab days: a synthetic day
        trace = tmp_path / "20110303"
        trace.mkdir()
        for v in range(60):
            samples = [(v * 7 + i * (3 + v % 5)) % 90 for i in range(288)]
            (trace / f"vm{v:03d}").write_text("".join(f"{s}\n" for s in samples))
    shots = screenshots.make_all(out, trace, hours=6)
    assert set(shots) == {"report", "dashboard", "demo"}
    for name, png in shots.items():
        w, h = png_size(png)
        assert w >= 800 and h >= 600, (name, w, h)
        # a blank page compresses to a few KiB; text and charts do not
        assert png.stat().st_size > 20_000, (name, png.stat().st_size)


def test_dashboard_page_places_every_panel() -> None:
    import json

    dash = json.loads(screenshots.DASHBOARD.read_text())
    page, height = screenshots.dashboard_page(dash)
    for p in dash["panels"]:
        assert p["title"].replace("&", "&amp;") in page
    assert height > 1000 and "Migrations started" in page  # an annotation


def test_round_ticks_and_a_robust_axis() -> None:
    assert [_nice_step(s) for s in (1, 7, 40, 401, 0.3)] == [0.2, 2.0, 10.0, 100.0, 0.1]
    assert _nice_max(401) == 500 and _nice_max(400) == 400 and _nice_max(0) == 1.0
    burst = [402.0, 217.0, 160.0] + [5.0, 12.0, 3.0, 18.0] * 40
    top, peak = axis_top([burst, [0.0] * len(burst)])
    assert peak == 402 and top == 20  # the day's moves fill the chart, the burst is labelled
    even = [10.0, 12.0, 11.0] * 20
    assert axis_top([even]) == (15.0, None)
    svg = svg_chart("m", [i / 12 for i in range(len(burst))], [("p", burst)], bars=True)
    assert "peak 402 at 0.0 h" in svg and ">20</text>" in svg
