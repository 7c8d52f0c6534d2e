"""One day of the energy account as an inline SVG chart: the grid draw against what was
allowed, minute by minute, with the grants' part of the allowance shaded, excess in red and
meter gaps left as gaps (a grey band, no line).

Drawn by hand, as the dashboard's chart is (controller/adapters/dashboard/app.js): a chart
library would need a script, and the report must be one self-contained file that prints the
same as it shows, with no script at all. Every coordinate is computed here; the only text
from the report is escaped."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from html import escape
from typing import Any

WIDTH, HEIGHT = 1000, 340
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 14, 50
DAY_S = 86_400.0
HOUR_TICKS = range(0, 25, 3)
TOUCH_S = 1e-6  # intervals closer than this touch: one line, one band
SAME_PX = 0.05  # bands whose edges are closer than this are the same height


@dataclass(frozen=True, slots=True)
class Minute:
    """One interval of the day's series, its times as seconds since the day's midnight."""

    t0: float
    t1: float
    grid_kw: float | None
    allowed_kw: float | None
    granted_kw: float
    excess_kwh: float


def number(value: object) -> float | None:
    """A finite float, or None for anything else (a gap, or a value no chart can place)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def instant(value: object) -> datetime | None:
    """An ISO 8601 instant in UTC (naive: taken as UTC), or None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def minutes(day: Mapping[str, Any]) -> tuple[datetime, list[Minute]] | None:
    """The day's midnight (UTC) and its series on it; None if the day has no readable date."""
    try:
        on = date.fromisoformat(str(day.get("date")))
    except ValueError:
        return None
    midnight = datetime.combine(on, datetime.min.time(), UTC)
    points: list[tuple[float, Mapping[str, Any]]] = []
    series = day.get("series")
    for point in series if isinstance(series, list) else ():
        at = instant(point.get("start")) if isinstance(point, Mapping) else None
        if at is not None and 0 <= (t := (at - midnight).total_seconds()) < DAY_S:
            points.append((t, point))
    points.sort(key=lambda p: p[0])
    out = []
    for i, (t0, p) in enumerate(points):
        # An interval is a minute, or less where the next one starts sooner.
        t1 = min(t0 + 60.0, points[i + 1][0] if i + 1 < len(points) else DAY_S)
        out.append(
            Minute(
                t0,
                t1,
                number(p.get("grid_kw")),
                number(p.get("allowed_kw")),
                max(0.0, number(p.get("granted_kw")) or 0.0),
                max(0.0, number(p.get("excess_kwh")) or 0.0),
            )
        )
    return midnight, out


def nice_step(span: float, ticks: int) -> float:
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    return float(next(f * mag for f in (1, 2, 2.5, 5, 10) if f * mag >= raw))


class _Plot:
    """Seconds of the day and kW to the SVG's coordinates."""

    def __init__(self, top_kw: float) -> None:
        self.step = nice_step(top_kw * 1.1 if top_kw > 0 else 1.0, 5)
        self.max_kw = max(self.step, math.ceil(top_kw * 1.1 / self.step) * self.step)

    @staticmethod
    def x(t: float) -> float:
        return LEFT + t / DAY_S * (WIDTH - LEFT - RIGHT)

    def y(self, kw: float) -> float:
        kw = min(max(kw, 0.0), self.max_kw)
        return HEIGHT - BOTTOM - kw / self.max_kw * (HEIGHT - TOP - BOTTOM)


def _f(v: float) -> str:
    return f"{v:.1f}"


def _steps(plot: _Plot, series: Sequence[Minute], value: Callable[[Minute], float | None]) -> str:
    """A step line over the intervals, broken where the value is missing."""
    d: list[str] = []
    end: float | None = None
    for m in series:
        v = value(m)
        if v is None:
            end = None
            continue
        y = _f(plot.y(v))
        d.append(
            f"V{y}" if end is not None and m.t0 - end < TOUCH_S else f"M{_f(plot.x(m.t0))},{y}"
        )
        d.append(f"H{_f(plot.x(m.t1))}")
        end = m.t1
    return "".join(d)


def _bands(plot: _Plot, bands: Iterable[tuple[float, float, float, float]], min_px: float) -> str:
    """Rectangles (t0, t1, low kW, high kW); touching ones of the same height joined."""
    merged: list[list[float]] = []
    for t0, t1, lo, hi in bands:
        y0, y1 = plot.y(hi), plot.y(lo)
        y0 = min(y0, y1 - min_px)
        last = merged[-1] if merged else None
        if (
            last
            and abs(last[1] - t0) < TOUCH_S
            and abs(last[2] - y0) < SAME_PX
            and abs(last[3] - y1) < SAME_PX
        ):
            last[1] = t1
        else:
            merged.append([t0, t1, y0, y1])
    return "".join(
        f"M{_f(plot.x(t0))},{_f(y0)}H{_f(plot.x(t1))}V{_f(y1)}H{_f(plot.x(t0))}Z"
        for t0, t1, y0, y1 in merged
    )


def day_chart(day: Mapping[str, Any], ident: str) -> str:
    """The day's chart as an <svg> element (or a sentence saying why there is none);
    `ident` names its title element for screen readers."""
    found = minutes(day)
    if found is None:
        return '<p class="nochart">No chart: the day has no readable date.</p>'
    midnight, series = found
    if not series:
        return '<p class="nochart">No chart: no interval of this day was recorded.</p>'
    top = max((v for m in series for v in (m.grid_kw, m.allowed_kw) if v is not None), default=0.0)
    plot = _Plot(top)
    parts = [
        (
            f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-labelledby="{escape(ident)}-t" xmlns="http://www.w3.org/2000/svg">'
        ),
        f'<title id="{escape(ident)}-t">{escape(_describe(midnight, series))}</title>',
    ]
    parts += _axes(plot, midnight)
    gaps = _bands(plot, ((m.t0, m.t1, 0.0, plot.max_kw) for m in series if m.grid_kw is None), 0)
    if gaps:
        parts.append(f'<path class="gap" data-testid="chart-gap" d="{gaps}"/>')
    granted = _bands(
        plot,
        (
            (m.t0, m.t1, max(m.allowed_kw - m.granted_kw, 0.0), m.allowed_kw)
            for m in series
            if m.granted_kw > 0 and m.allowed_kw is not None
        ),
        0,
    )
    if granted:
        parts.append(f'<path class="granted" data-testid="chart-granted" d="{granted}"/>')
    allowed = _steps(plot, series, lambda m: m.allowed_kw)
    if allowed:
        parts.append(f'<path class="allowed" data-testid="chart-allowed" d="{allowed}"/>')
    grid = _steps(plot, series, lambda m: m.grid_kw)
    if grid:
        parts.append(f'<path class="draw" data-testid="chart-draw" d="{grid}"/>')
    over = [m for m in series if m.excess_kwh > 0]
    if over:
        # Red between what was allowed and the draw, at least 2 px so a small overrun shows;
        # and a red mark under the axis, so it is found at a glance, even in grey print.
        excess = _bands(
            plot,
            (
                (m.t0, m.t1, m.allowed_kw or 0.0, max(m.grid_kw or 0.0, m.allowed_kw or 0.0))
                for m in over
            ),
            2,
        )
        marks = "".join(
            f"M{_f(plot.x(m.t0))},{HEIGHT - BOTTOM + 2}H{_f(plot.x(m.t1))}v5H{_f(plot.x(m.t0))}Z"
            for m in over
        )
        parts.append(f'<path class="excess" data-testid="chart-excess" d="{excess}{marks}"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def _axes(plot: _Plot, midnight: datetime) -> list[str]:
    out = []
    x0, x1 = plot.x(0), plot.x(DAY_S)
    kw = 0.0
    while kw <= plot.max_kw + plot.step / 2:
        y = _f(plot.y(kw))
        label = f"{kw:,.1f}".removesuffix(".0")
        out.append(f'<line class="grid" x1="{_f(x0)}" x2="{_f(x1)}" y1="{y}" y2="{y}"/>')
        out.append(f'<text class="ylabel" x="{LEFT - 6}" y="{_f(plot.y(kw) + 4)}">{label}</text>')
        kw += plot.step
    for hour in HOUR_TICKS:
        x = _f(plot.x(hour * 3600.0))
        out.append(f'<line class="grid" x1="{x}" x2="{x}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>')
        out.append(f'<text class="xlabel" x="{x}" y="{HEIGHT - BOTTOM + 20}">{hour:02d}</text>')
    base = HEIGHT - BOTTOM
    out.append(f'<line class="axis" x1="{_f(x0)}" x2="{_f(x1)}" y1="{base}" y2="{base}"/>')
    out.append(f'<line class="axis" x1="{_f(x0)}" x2="{_f(x0)}" y1="{TOP}" y2="{base}"/>')
    middle = _f((TOP + base) / 2)
    out.append(f'<text class="axislabel" transform="translate(16 {middle}) rotate(-90)">kW</text>')
    out.append(
        f'<text class="axislabel" x="{_f((x0 + x1) / 2)}" y="{HEIGHT - 6}">'
        f"hour of {midnight:%Y-%m-%d} (UTC)</text>"
    )
    return out


def _describe(midnight: datetime, series: Sequence[Minute]) -> str:
    draw = [m.grid_kw for m in series if m.grid_kw is not None]
    gap_min = sum(m.t1 - m.t0 for m in series if m.grid_kw is None) / 60
    excess = sum(m.excess_kwh for m in series)
    peak = f"peak draw {max(draw):,.1f} kW" if draw else "no draw measured"
    return (
        f"Grid draw against the allowed kW on {midnight:%Y-%m-%d} (UTC): {peak}; "
        f"excess {excess:,.3f} kWh; meter gaps {gap_min:,.0f} min"
    )
