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


def _nice_step(span: float, ticks: int = 5) -> float:
    """A round tick step (1, 2 or 5 x 10^k) giving about `ticks` intervals over `span`."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * mag >= raw:
            return float(m * mag)
    return float(10 * mag)  # pragma: no cover - the loop always returns


def _nice_max(v: float) -> float:
    """The axis top: `v` rounded up to a whole number of round steps (1.0 when empty)."""
    if v <= 0 or not math.isfinite(v):
        return 1.0
    step = _nice_step(v)
    return step * math.ceil(v / step - 1e-9)


def _percentile(vals: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of `vals` by the nearest rank (0.0 when empty)."""
    if not vals:
        return 0.0
    ordered = sorted(vals)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def axis_top(series: Sequence[Sequence[float]]) -> tuple[float, float | None]:
    """(axis top, off-scale peak or None). A replay starts from the trace's initial placement,
    so its first hour can burst (hundreds of migrations, dozens of overloaded hosts) and flatten
    the rest of the day. The axis follows each series' 98th percentile when the peak is more
    than 1.5 x that; the values above are drawn clipped and the peak is written on the chart."""
    finite = [[y for y in ys if math.isfinite(y)] for ys in series]
    peak = max((max(ys) for ys in finite if ys), default=0.0)
    body = max((_percentile(ys, 0.98) for ys in finite if ys), default=0.0)
    if body > 0 and peak > 1.5 * body:
        return _nice_max(body * 1.1), peak
    return _nice_max(peak), None


def _fmt(v: float) -> str:
    if v == int(v):
        return f"{int(v):,}"
    return f"{v:,.2f}".rstrip("0").rstrip(".") if abs(v) < 10 else f"{v:,.1f}"


def _hour_step(x_max: float) -> int:
    for step in (1, 2, 3, 4, 6, 12, 24):
        if x_max / step <= 8:
            return step
    return 48


def svg_chart(
    title: str,
    xs: Sequence[float],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    bars: bool = False,
    unit: str = "",
) -> str:
    """One chart: x in hours, one polyline (or bar set) per series; round ticks, a robust top
    (see `axis_top`), values above it clipped and the peak written on the chart."""
    x_max = max(xs[-1] if xs else 1.0, 1e-9)
    y_max, off_scale = axis_top([ys for _, ys in series])
    pw = _W - _PAD_L - _PAD_R
    ph = _H - _PAD_T - _PAD_B

    def px(x: float) -> float:
        return _PAD_L + pw * x / x_max

    def py(y: float) -> float:
        return _PAD_T + ph * (1 - min(y, y_max) / y_max)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{_PAD_L}" y="18" font-size="14" font-weight="bold">'
        f"{html.escape(title)}{' (' + html.escape(unit) + ')' if unit else ''}</text>",
    ]
    step = _nice_step(y_max)
    n_ticks = round(y_max / step)
    for i in range(n_ticks + 1):
        y = step * i
        out.append(
            f'<line x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
            'stroke="#e5e5e5"/>'
            f'<text x="{_PAD_L - 6}" y="{py(y) + 4:.1f}" font-size="11" '
            f'text-anchor="end">{_fmt(y)}</text>'
        )
    if off_scale is not None:
        at = next(
            (x for _, ys in series for x, y in zip(xs, ys, strict=False) if y == off_scale), 0.0
        )
        out.append(
            f'<text x="{px(at) + 8:.1f}" y="{_PAD_T + 11}" font-size="11" fill="#b42318">'
            f"&#8593; peak {_fmt(off_scale)} at {at:.1f} h (axis cut at the 98th percentile)"
            "</text>"
        )
    hstep = _hour_step(x_max)
    h = 0
    while h <= x_max + 1e-9:
        out.append(
            f'<text x="{px(h):.1f}" y="{_H - _PAD_B + 16}" font-size="11" '
            f'text-anchor="middle">{h}h</text>'
        )
        h += hstep
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
    ("bytes_moved", "Memory moved (GiB)", "gib"),
    ("peak_concurrent_migrations", "Peak concurrent migrations", "{}"),
    ("wall_s", "Replay wall time (s)", "{:.1f}"),
)


def _cell(fmt: str, v: Any) -> str:
    if fmt == "gib" and isinstance(v, int | float):
        return f"{v / 2**30:,.1f}"
    try:
        return fmt.format(v)
    except (TypeError, ValueError):
        return html.escape(str(v))


def _interval_min(xs: Sequence[float]) -> str:
    return f"{(xs[1] - xs[0]) * 60:g}" if len(xs) > 1 else "5"


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
            "Migrations started",
            xs,
            [(n, t.migrations) for n, t in zip(names, tl, strict=True)],
            bars=True,
            unit=f"per {_interval_min(xs)} min interval",
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
