"""A self-contained HTML report of a replay: inline SVG charts, no external assets.

Four charts over the day, each with the policy next to the baseline (no migration): active hosts,
power (kW), overloaded hosts (allocated < requested MIPS) and migrations per interval; then the
summary metrics side by side.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rebalancerd.sim.replay import ReplayResult

_W, _H = 720, 240
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 56, 16, 28, 50
_COLOURS = ("#1f6feb", "#999999")


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= v:
            return float(m * mag)
    return float(10 * mag)


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v >= 10 or v == int(v) else f"{v:.1f}"


def svg_chart(
    title: str,
    xs: Sequence[float],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    bars: bool = False,
    unit: str = "",
) -> str:
    """One chart: x in hours, one polyline (or bar set) per series."""
    x_max = max(xs[-1] if xs else 1.0, 1e-9)
    y_max = _nice_max(max((max(ys) for _, ys in series if ys), default=1.0))
    pw = _W - _PAD_L - _PAD_R
    ph = _H - _PAD_T - _PAD_B

    def px(x: float) -> float:
        return _PAD_L + pw * x / x_max

    def py(y: float) -> float:
        return _PAD_T + ph * (1 - y / y_max)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{_PAD_L}" y="18" font-size="14" font-weight="bold">'
        f"{html.escape(title)}{' (' + html.escape(unit) + ')' if unit else ''}</text>",
    ]
    for i in range(5):
        y = y_max * i / 4
        out.append(
            f'<line x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
            'stroke="#e5e5e5"/>'
            f'<text x="{_PAD_L - 6}" y="{py(y) + 4:.1f}" font-size="11" '
            f'text-anchor="end">{_fmt(y)}</text>'
        )
    step = 3 if x_max > 6 else 1
    h = 0
    while h <= x_max + 1e-9:
        out.append(
            f'<text x="{px(h):.1f}" y="{_H - _PAD_B + 16}" font-size="11" '
            f'text-anchor="middle">{h}h</text>'
        )
        h += step
    bar_w = max(pw / max(len(xs), 1) / max(len(series), 1), 0.5)
    for si, (name, ys) in enumerate(series):
        colour = _COLOURS[si % len(_COLOURS)]
        if bars:
            for x, y in zip(xs, ys, strict=False):
                if y > 0:
                    out.append(
                        f'<rect x="{px(x) + si * bar_w:.2f}" y="{py(y):.1f}" '
                        f'width="{bar_w:.2f}" height="{py(0) - py(y):.1f}" fill="{colour}"/>'
                    )
        else:
            pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=False))
            out.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{pts}"/>'
            )
        lx = _PAD_L + si * 300
        ly = _H - 14
        out.append(
            f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{lx + 14}" y="{ly}" font-size="11">{html.escape(name[:40])}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


_ROWS: tuple[tuple[str, str, str], ...] = (
    ("energy_kwh", "Energy (kWh)", "{:.2f}"),
    ("slatah", "SLATAH", "{:.2%}"),
    ("pdm", "PDM", "{:.4%}"),
    ("slav", "SLAV", "{:.2e}"),
    ("esv", "ESV", "{:.2e}"),
    ("migrations", "Migrations", "{:,}"),
    ("migrations_per_vm_day", "Migrations per VM per day", "{:.3f}"),
    ("bytes_moved", "Bytes moved", "{:,}"),
    ("peak_concurrent_migrations", "Peak concurrent migrations", "{}"),
    ("wall_s", "Replay wall time (s)", "{:.1f}"),
)


def _cell(fmt: str, v: Any) -> str:
    try:
        return fmt.format(v)
    except (TypeError, ValueError):
        return html.escape(str(v))


def render_html(result: ReplayResult, baseline: ReplayResult | None = None) -> str:
    runs = [result] + ([baseline] if baseline is not None else [])
    names = [r.decider for r in runs]
    tl = [r.timeline for r in runs]
    xs = tl[0].hours
    charts = [
        svg_chart(
            "Active hosts", xs, [(n, t.active_hosts) for n, t in zip(names, tl, strict=True)]
        ),
        svg_chart(
            "Power", xs, [(n, t.power_kw) for n, t in zip(names, tl, strict=True)], unit="kW"
        ),
        svg_chart(
            "Overloaded hosts (allocated < requested MIPS)",
            xs,
            [(n, t.overloaded_hosts) for n, t in zip(names, tl, strict=True)],
        ),
        svg_chart(
            "Migrations started per interval",
            xs,
            [(n, t.migrations) for n, t in zip(names, tl, strict=True)],
            bars=True,
        ),
    ]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = []
    for key, label, fmt in _ROWS:
        vals = [r.wall_s if key == "wall_s" else r.summary.get(key) for r in runs]
        rows.append(
            f"<tr><td>{html.escape(label)}</td>"
            + "".join(f"<td>{_cell(fmt, v)}</td>" for v in vals)
            + "</tr>"
        )
    notes = "".join(f"<li>{html.escape(n)}</li>" for r in runs for n in r.notes)
    blocks = result.limit_blocks
    held = ", ".join(f"{k}: {v}" for k, v in sorted(blocks.items())) or "none"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>rebalancerd simulate: {html.escape(result.trace)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 780px; }}
table {{ border-collapse: collapse; margin: 12px 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
td:first-child {{ text-align: left; }}
svg {{ display: block; margin: 12px 0; }}
</style></head><body>
<h1>Replay of {html.escape(result.trace)}</h1>
<p>{result.vms} VMs on {result.hosts} hosts, {result.duration_s / 3600:.1f} h simulated,
CloudSim setup. Blue: <b>{html.escape(result.decider)}</b>
{"; grey: <b>" + html.escape(baseline.decider) + "</b>" if baseline else ""}.</p>
{"".join(charts)}
<h2>Summary</h2>
<table><tr><th>metric</th>{head}</tr>
{"".join(rows)}
</table>
<p>Moves held back by limits ({html.escape(result.decider)}): {html.escape(held)}</p>
{"<ul>" + notes + "</ul>" if notes else ""}
</body></html>
"""


def write_report(path: str | Path, result: ReplayResult, baseline: ReplayResult | None) -> None:
    p = Path(path)
    if p.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"report {p}: only .html is supported (self-contained, inline SVG)")
    p.write_text(render_html(result, baseline), encoding="utf-8")
