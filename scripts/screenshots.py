"""Screenshots the way a person sees them: headless Chromium renders the `rebalancerd simulate`
HTML report, the Grafana dashboard JSON (through a small static page of our own: the panels at
their grid positions with titles, units, threshold colours and queries) and the demo's terminal
output, to PNG.

    .venv/bin/python scripts/screenshots.py [--out docs/img] [--trace DIR] [--html-only]

Needs Debian's `chromium` (scripts/system-packages.txt). Network: none (file:// pages only;
background networking, component updates and sync are switched off).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "rebalancerd.json"
DEFAULT_TRACE = ROOT.parent / "shared" / "data" / "planetlab" / "20110303"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def shoot(page: Path, png: Path, width: int, height: int) -> Path:
    """Render `page` (a local HTML file) at width x height CSS pixels into `png`."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rbd-chromium-") as profile:
        r = subprocess.run(
            [
                exe,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={png}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    if r.returncode != 0 or not png.exists():
        raise RuntimeError(f"chromium failed ({r.returncode}): {r.stderr[-800:]}")
    return png


# -- the dashboard ----------------------------------------------------------------------------

_CELL_W, _CELL_H = 62, 30  # px per Grafana grid unit (24 columns) and per row unit

_COLOURS = {
    "red": "#e02f44",
    "green": "#37872d",
    "orange": "#ff9830",
    "yellow": "#fade2a",
    "blue": "#3274d9",
    "text": "#ccccdc",
}


def _colour(c: str) -> str:
    return _COLOURS.get(c, c)


def _thresholds(p: dict[str, Any]) -> str:
    steps = (p.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}) or {}).get(
        "steps", []
    )
    mapped = p.get("fieldConfig", {}).get("defaults", {}).get("mappings", [])
    out = []
    for s in steps:
        v = "base" if s.get("value") is None else f"{s['value']:g}"
        out.append(f'<span class="sw" style="background:{_colour(s.get("color", ""))}"></span>{v}')
    for m in mapped:
        for k, o in (m.get("options") or {}).items():
            if isinstance(o, dict) and "text" in o:
                out.append(f"{html.escape(str(k))}&rarr;{html.escape(str(o['text']))}")
    return " ".join(out)


def dashboard_page(dash: dict[str, Any]) -> tuple[str, int]:
    """A static HTML page of the dashboard and its height in px."""
    boxes = []
    bottom = 0
    for p in dash.get("panels", []):
        g = p.get("gridPos", {})
        x, y, w, h = g.get("x", 0), g.get("y", 0), g.get("w", 24), g.get("h", 8)
        bottom = max(bottom, y + h)
        style = (
            f"left:{x * _CELL_W}px;top:{y * _CELL_H}px;width:{w * _CELL_W - 6}px;"
            f"height:{h * _CELL_H - 6}px"
        )
        if p.get("type") == "row":
            boxes.append(
                f'<div class="row" style="{style}">{html.escape(p.get("title", ""))}</div>'
            )
            continue
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        exprs = "".join(
            f"<li><code>{html.escape(t.get('expr', ''))}</code></li>" for t in p.get("targets", [])
        )
        boxes.append(
            f'<div class="panel {html.escape(p.get("type", ""))}" style="{style}">'
            f'<div class="t">{html.escape(p.get("title", ""))}'
            f'<span class="k">{html.escape(p.get("type", ""))}'
            f"{' &middot; ' + html.escape(unit) if unit else ''}</span></div>"
            f'<div class="th">{_thresholds(p)}</div><ul>{exprs}</ul></div>'
        )
    ann = dash.get("annotations", {}).get("list", [])
    ann_txt = " &middot; ".join(
        f'<span class="sw" style="background:{_colour(a.get("iconColor", ""))}"></span>'
        f"{html.escape(a.get('name', ''))}"
        for a in ann
        if not a.get("builtIn")
    )
    height = bottom * _CELL_H + 90
    page = f"""<!doctype html><html><head><meta charset="utf-8"><style>
body {{ margin:0; background:#111217; color:#ccccdc; font:12px 'DejaVu Sans',sans-serif; }}
h1 {{ font-size:18px; margin:10px 12px 2px; }}
.sub {{ margin:0 12px 8px; color:#8e8e9e; }}
.grid {{ position:relative; margin:0 12px; height:{bottom * _CELL_H}px; }}
.panel, .row {{ position:absolute; box-sizing:border-box; overflow:hidden; }}
.panel {{ background:#181b1f; border:1px solid #2c3235; border-radius:3px; padding:6px 8px; }}
.row {{ font-size:14px; font-weight:bold; padding-top:6px; border-bottom:1px solid #2c3235; }}
.t {{ font-weight:bold; font-size:13px; color:#e8e8f0; }}
.k {{ float:right; font-weight:normal; color:#8e8e9e; font-size:11px; }}
.th {{ margin:4px 0; color:#b0b0c0; }}
.sw {{ display:inline-block; width:10px; height:10px; margin:0 3px 0 6px; vertical-align:-1px; }}
ul {{ margin:4px 0 0 14px; padding:0; }} li {{ margin:0 0 3px; }}
code {{ font:10.5px 'DejaVu Sans Mono',monospace; color:#9fc5f8; word-break:break-all; }}
</style></head><body>
<h1>{html.escape(dash.get("title", ""))}</h1>
<div class="sub">deploy/grafana/rebalancerd.json: {len(dash.get("panels", []))} panels;
annotations: {ann_txt or "none"}</div>
<div class="grid">{"".join(boxes)}</div></body></html>"""
    return page, height


# -- the demo ---------------------------------------------------------------------------------


def demo_page(text: str) -> tuple[str, int]:
    lines = text.rstrip("\n").splitlines()
    page = f"""<!doctype html><html><head><meta charset="utf-8"><style>
body {{ margin:0; background:#1e1e1e; }}
pre {{ margin:0; padding:14px 16px; color:#d4d4d4; font:13px/1.35 'DejaVu Sans Mono',monospace; }}
.p {{ color:#6a9955; }}
</style></head><body><pre><span class="p">$ rebalancerd demo --duration 12</span>
{html.escape(chr(10).join(lines))}</pre></body></html>"""
    return page, 40 + 18 * (len(lines) + 1)


def run_cli(*args: str, timeout: float = 600) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_COLOR="1")
    r = subprocess.run(
        [sys.executable, "-m", "rebalancerd.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
    if r.returncode != 0:
        raise RuntimeError(f"rebalancerd {' '.join(args)}: {r.stderr[-800:]}")
    return r.stdout


def make_all(out: Path, trace: Path, hours: float | None = None) -> dict[str, Path]:
    """Render the three screenshots into `out`; returns name -> PNG path."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rbd-shots-"))
    try:
        shots: dict[str, Path] = {}
        report = work / "report.html"
        extra = ["--hours", str(hours)] if hours else []
        run_cli(
            "simulate",
            "--trace",
            f"planetlab:{trace}",
            "--setup",
            "cloudsim",
            "--report",
            str(report),
            "--json",
            *extra,
        )
        shots["report"] = shoot(report, out / "simulate-report.png", 800, 1560)
        page, height = dashboard_page(json.loads(DASHBOARD.read_text()))
        (work / "dashboard.html").write_text(page)
        shots["dashboard"] = shoot(
            work / "dashboard.html", out / "dashboard.png", 24 * _CELL_W + 24, height
        )
        text = run_cli("demo", "--duration", "12")
        page, height = demo_page(text)
        (work / "demo.html").write_text(page)
        shots["demo"] = shoot(work / "demo.html", out / "demo.png", 1000, height)
        return shots
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--hours", type=float, default=None)
    a = ap.parse_args()
    for name, png in make_all(a.out, a.trace, a.hours).items():
        print(f"{name}: {png} ({png.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
