"""`curtaild report energy --format html`: the energy report as one self-contained, printable
HTML file for people (the grid operator, the tax office, the farm's finance team).

It renders the report dict (controller/record/energy_report.py) as it is: a summary that
says what measured the energy and states its gaps and estimates plainly, the hourly table, a
chart per day of the draw against what was allowed, the grants, the curtailments, the pool
violations and the journal's chain head. No script, no CDN, no fetch: the file reads the same
offline and on paper, and its Content-Security-Policy forbids loading anything. Every value
from the report is escaped: the journal holds text from the grid, operators and miners.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from controller.record.energy_chart import day_chart, instant, number

# Amounts that differ by less than this are equal "within rounding" (the account rounds its
# intervals to the Wh).
ADD_UP_KWH = 0.01
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
TOTALS = (
    ("grid_kwh", "Grid draw"),
    ("within_grants_kwh", "inside grants"),
    ("base_allowance_kwh", "inside the base allowance"),
    ("excess_kwh", "excess: above what the grid allowed"),
    ("exempt_generation_kwh", "Own generation (exempt)"),
    ("allowed_kwh", "What the grid allowed"),
)
STYLE = """
@page { size: A4; margin: 12mm; }
* { box-sizing: border-box; }
body { font: 13px/1.4 system-ui, "DejaVu Sans", Arial, sans-serif; color: #000;
  background: #fff; max-width: 60rem; margin: 1rem auto; padding: 0 1rem;
  -webkit-print-color-adjust: exact; print-color-adjust: exact; }
h1 { font-size: 1.5rem; margin: 0 0 .2rem; }
h2 { font-size: 1.15rem; margin: 1.6rem 0 .5rem; padding-top: .4rem; border-top: 2px solid #000; }
h3 { font-size: 1rem; margin: 1rem 0 .3rem; }
p { margin: .3rem 0; }
code { font: 12px ui-monospace, "DejaVu Sans Mono", monospace; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; vertical-align: top; padding: 2px 6px; border-bottom: 1px solid #999; }
th { border-bottom: 2px solid #000; }
thead { display: table-header-group; }
tr { break-inside: avoid; page-break-inside: avoid; }
.num, .when { text-align: right; white-space: nowrap; }
.when { text-align: left; }
.bad { color: #b30000; font-weight: 700; }
.ok { color: #006400; }
.muted { color: #444; }
tr.excess td { background: #ffe0e0; }
tr.gap td { background: #ececec; }
table.totals { width: auto; min-width: 28rem; }
table.totals th[scope=row] { font-weight: 400; border-bottom: 1px solid #999; }
table.totals .sub th[scope=row] { padding-left: 1.5rem; }
.day { break-inside: avoid; page-break-inside: avoid; }
.chart { display: block; width: 100%; height: auto; }
.chart .grid { stroke: #d0d0d0; stroke-width: 1; }
.chart .axis { stroke: #000; stroke-width: 1.5; }
.chart text { font: 13px system-ui, "DejaVu Sans", Arial, sans-serif; fill: #000; }
.chart .ylabel { text-anchor: end; }
.chart .xlabel, .chart .axislabel { text-anchor: middle; }
.chart .gap { fill: #d9d9d9; }
.chart .granted { fill: #2e7d32; fill-opacity: .25; }
.chart .allowed { fill: none; stroke: #000; stroke-width: 1.5; stroke-dasharray: 6 3; }
.chart .draw { fill: none; stroke: #0044cc; stroke-width: 1.5; stroke-linejoin: round; }
.chart .excess { fill: #d00000; }
.legend { display: flex; flex-wrap: wrap; gap: .2rem 1.2rem; margin: .2rem 0 0; }
.legend svg { width: 1.8rem; height: .8rem; vertical-align: middle; }
@media print {
  body { max-width: none; margin: 0; padding: 0; font-size: 10.5px; }
  h2 { break-after: avoid; page-break-after: avoid; }
}
"""
LEGEND = (
    '<p class="legend">'
    '<span><svg viewBox="0 0 28 10" aria-hidden="true"><path d="M0,5H28" '
    'style="stroke:#0044cc;stroke-width:2"/></svg> grid draw</span>'
    '<span><svg viewBox="0 0 28 10" aria-hidden="true"><path d="M0,5H28" '
    'style="stroke:#000;stroke-width:2;stroke-dasharray:6 3"/></svg> allowed</span>'
    '<span><svg viewBox="0 0 28 10" aria-hidden="true"><rect width="28" height="10" '
    'style="fill:#2e7d32;fill-opacity:.25"/></svg> of which granted (auction grants)</span>'
    '<span><svg viewBox="0 0 28 10" aria-hidden="true"><rect width="28" height="10" '
    'style="fill:#d00000"/></svg> excess</span>'
    '<span><svg viewBox="0 0 28 10" aria-hidden="true"><rect width="28" height="10" '
    'style="fill:#d9d9d9"/></svg> meter gap: no reading, nothing counted</span>'
    "</p>"
)


def render_energy_html(report: Mapping[str, Any]) -> str:
    """The report as one HTML document (UTF-8 text)."""
    site = _text(report.get("site"))
    period = f"{_when(report.get('from'))} to {_when(report.get('to'))} (UTC)"
    totals = _mapping(report.get("totals"))
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>Energy report: {site}, {period}</title>",
        f"<style>{STYLE}</style></head><body>",
        f'<h1>Energy report: <span data-testid="site">{site}</span></h1>',
        f'<p class="muted" data-testid="period">{period}</p>',
        *_summary(report, totals),
        *_hours(_rows(report.get("hours"))),
        *_days(_rows(report.get("days"))),
        *_grants(_rows(report.get("grants"))),
        *_curtailments(_rows(report.get("curtailments"))),
        *_pools(_rows(report.get("pools"))),
        *_chain(_mapping(report.get("chain"))),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# -- sections ------------------------------------------------------------------------------


def _summary(report: Mapping[str, Any], totals: Mapping[str, Any]) -> list[str]:
    rows = []
    for name, label in TOTALS:
        sub = name in {"within_grants_kwh", "base_allowance_kwh", "excess_kwh"}
        bad = name == "excess_kwh" and (number(totals.get(name)) or 0) > 0
        rows.append(
            f'<tr class="{"sub" if sub else "main"}" data-testid="total-{name}">'
            f'<th scope="row">{label}</th>'
            f'<td class="num{" bad" if bad else ""}">{_kwh(totals.get(name))} kWh</td></tr>'
        )
    rows.append(
        f'<tr><th scope="row">Meter gaps</th><td class="num">{_dur(totals.get("gap_s"))}</td></tr>'
    )
    rows.append(
        '<tr><th scope="row">Estimated from the miners</th>'
        f'<td class="num">{_dur(totals.get("estimated_s"))}</td></tr>'
    )
    return [
        "<h2>Summary</h2>",
        f'<table class="totals" data-testid="totals"><tbody>{"".join(rows)}</tbody></table>',
        f'<p data-testid="measured-by">{_measured(report.get("measured_by"), totals)}</p>',
        f'<p data-testid="gaps">{_gaps(totals)}</p>',
        f'<p data-testid="excess">{_excess(totals)}</p>',
        f'<p data-testid="adds-up">{_adds_up(totals)}</p>',
    ]


def _hours(hours: Sequence[Mapping[str, Any]]) -> list[str]:
    head = _head(
        "Hour (UTC)", "Grid|kWh", "Grants|kWh", "Base|kWh", "Excess|kWh", "Exempt|kWh",
        "Allowed|kWh", "Gap", "Estimated", "Measured by",
    )  # fmt: skip
    body = []
    for h in hours:
        cls = _row_class(h)
        cells = [_td(f"{_when(h.get('start'))}&ndash;{_clock(h.get('end'))}", "when")]
        cells += [_td(_kwh(h.get(name)), "num") for name, _ in TOTALS]
        cells += [_td(_dur(h.get("gap_s")), "num"), _td(_dur(h.get("estimated_s")), "num")]
        cells.append(_td(_text(h.get("measured_by"))))
        body.append(f'<tr class="{cls}">{"".join(cells)}</tr>')
    return [
        "<h2>Hour by hour</h2>",
        (
            "<p>Grants: inside active grants. Base: inside the base allowance. Exempt: own "
            "generation, counted apart. Allowed: what the grid allowed over the hour.</p>"
        ),
        _table("hours", head, body, "No hour in this period was recorded.", columns=10),
    ]


def _days(days: Sequence[Mapping[str, Any]]) -> list[str]:
    out = ["<h2>Day by day</h2>"]
    if not days:
        out.append('<p class="muted">No day in this period was recorded.</p>')
    for i, day in enumerate(days):
        figures = " · ".join(
            f"{label.split(':')[0]} {_kwh(day.get(name))} kWh" for name, label in TOTALS[:4]
        )
        excess = (number(day.get("excess_kwh")) or 0) > 0
        out += [
            f'<section class="day" data-testid="day" aria-labelledby="day-{i}-h">',
            f'<h3 id="day-{i}-h">{_when(day.get("date"))}</h3>',
            (
                f'<p class="{"bad" if excess else "muted"}">{figures}; meter gaps '
                f"{_dur(day.get('gap_s'))}; measured by: {_text(day.get('measured_by'))}</p>"
            ),
            day_chart(day, f"day-{i}"),
            LEGEND,
            "</section>",
        ]
    return out


def _grants(grants: Sequence[Mapping[str, Any]]) -> list[str]:
    head = _head(
        "Grant", "Source", "Start", "End", "Granted|kWh", "Used|kWh", "Utilisation|%",
        "Excess|kWh",
    )  # fmt: skip
    body = []
    for g in grants:
        excess = g.get("excess_kwh")
        body.append(
            "<tr>"
            + _td(_text(g.get("id")))
            + _td(_text(g.get("source")))
            + _td(_when(g.get("start")))
            + _td(_when(g.get("end")))
            + _td(_kwh(g.get("granted_kwh")), "num")
            + _td(_kwh(g.get("used_kwh")), "num")
            + _td(_share(g.get("utilisation")), "num")
            + _td(_kwh(excess), "num bad" if (number(excess) or 0) > 0 else "num")
            + "</tr>"
        )
    return [
        "<h2>Grants</h2>",
        _table("grants", head, body, "No grant was held in this period.", columns=8),
    ]


def _curtailments(items: Sequence[Mapping[str, Any]]) -> list[str]:
    head = _head("Curtailment", "Limit|kW", "Starts", "Due", "Ends", "Excess after deadline|kWh")
    body = []
    for c in items:
        excess = c.get("excess_kwh_after_deadline")
        end = c.get("end")
        body.append(
            "<tr>"
            + _td(f"{_text(c.get('id'))} r{_text(c.get('revision'))}")
            + _td(_kw(c.get("limit_kw")), "num")
            + _td(_when(c.get("starts_at")))
            + _td(_when(c.get("due_at")))
            + _td("until cancelled" if end is None else _when(end))
            + _td(_kwh(excess), "num bad" if (number(excess) or 0) > 0 else "num ok")
            + "</tr>"
        )
    return [
        "<h2>Curtailments</h2>",
        "<p>Energy drawn above a curtailment's limit after its deadline. It should be 0.</p>",
        _table("curtailments", head, body, "No curtailment in this period.", columns=6),
    ]


def _pools(items: Sequence[Mapping[str, Any]]) -> list[str]:
    head = _head("Miner", "Since", "Until", "Unapproved pools", "Action")
    body = []
    for p in items:
        urls = p.get("unapproved")
        pools = "<br>".join(
            f"<code>{_text(u)}</code>" for u in (urls if isinstance(urls, list) else [urls])
        )
        until = p.get("until")
        body.append(
            "<tr>"
            + _td(_text(p.get("miner_id")))
            + _td(_when(p.get("since")))
            + _td('<span class="bad">still</span>' if until is None else _when(until))
            + _td(pools)
            + _td(_text(p.get("action")))
            + "</tr>"
        )
    return [
        "<h2>Miners on unapproved pools</h2>",
        _table("pools", head, body, "Every miner mined for an approved pool.", columns=5),
    ]


def _chain(chain: Mapping[str, Any]) -> list[str]:
    head, rows = chain.get("head"), chain.get("rows")
    if head is None:
        text = "This report carries no journal chain head."
    else:
        text = (
            f"The journal's chain head is <code>{_text(head)}</code>, over "
            f"{_count(rows)} rows. <code>curtaild verify</code> recomputes it from the "
            "journal; a changed, removed or inserted row gives another head."
        )
    return ["<h2>Journal</h2>", f'<p data-testid="chain">{text}</p>']


# -- sentences -----------------------------------------------------------------------------


def _measured(by: object, totals: Mapping[str, Any]) -> str:
    estimated = _dur(totals.get("estimated_s"))
    if by == "meter":
        return "Measured by the site meter."
    if by == "estimate":
        return (
            "<strong>Estimated, not measured:</strong> there was no site meter, so every "
            "figure is the sum of the miners' own power readings, and their rated power "
            "where they gave none."
        )
    if by == "mixed":
        return (
            f"Measured by the site meter, except for {estimated} <strong>estimated</strong> "
            "from the miners' own power readings (and their rated power where they gave none)."
        )
    return f"Measured by: {_text(by)}."


def _gaps(totals: Mapping[str, Any]) -> str:
    gap = number(totals.get("gap_s"))
    if gap is not None and gap <= 0:
        return "The meter was read throughout: no gaps."
    return (
        f'<strong class="bad">The meter gave no reading for {_dur(gap)}</strong> in all. '
        "Those minutes are gaps: nothing is counted for them and nothing is interpolated. "
        "They are grey in the charts and counted in the hourly table."
    )


def _excess(totals: Mapping[str, Any]) -> str:
    excess = number(totals.get("excess_kwh"))
    if excess is not None and excess <= 0:
        return '<span class="ok">No excess: the draw stayed within what the grid allowed.</span>'
    return (
        f'<strong class="bad">Excess: {_kwh(excess)} kWh</strong> drawn above what the grid '
        "allowed at the time (after the deadline of each change). It is red in the charts."
    )


def _adds_up(totals: Mapping[str, Any]) -> str:
    parts = [number(totals.get(k)) for k in ("within_grants_kwh", "base_allowance_kwh")]
    grid, excess = number(totals.get("grid_kwh")), number(totals.get("excess_kwh"))
    if grid is None or excess is None or None in parts:
        return '<span class="bad">The totals are incomplete: they cannot be checked.</span>'
    diff = grid - excess - sum(p or 0.0 for p in parts)
    if abs(diff) < ADD_UP_KWH:
        return "The parts add up: grid draw = inside grants + inside the base allowance + excess."
    return f'<strong class="bad">The parts do not add up: they differ by {diff:,.3f} kWh.</strong>'


# -- cells ---------------------------------------------------------------------------------


def _head(*names: str) -> str:
    """Column heads; "Name|unit" is a number column with its unit under the name."""
    cells = []
    for name in names:
        label, _, unit = name.partition("|")
        cls = ' class="num"' if unit else ""
        cells.append(f"<th{cls}>{escape(label)}{f'<br>{escape(unit)}' if unit else ''}</th>")
    return f"<thead><tr>{''.join(cells)}</tr></thead>"


def _table(name: str, head: str, body: Iterable[str], empty: str, *, columns: int) -> str:
    rows = list(body) or [f'<tr><td colspan="{columns}" class="muted">{escape(empty)}</td></tr>']
    return f'<table data-testid="{name}">{head}<tbody>{"".join(rows)}</tbody></table>'


def _td(html: str, cls: str = "") -> str:
    return f'<td class="{cls}">{html}</td>' if cls else f"<td>{html}</td>"


def _row_class(row: Mapping[str, Any]) -> str:
    if (number(row.get("excess_kwh")) or 0) > 0:
        return "excess"
    return "gap" if (number(row.get("gap_s")) or 0) > 0 else ""


def _text(value: object) -> str:
    return "—" if value is None else escape(str(value))


def _fixed(value: object, digits: int) -> str:
    v = number(value)
    return f"{v:,.{digits}f}" if v is not None else _text(value)


def _kwh(value: object) -> str:
    return _fixed(value, 3)


def _kw(value: object) -> str:
    return _fixed(value, 1)


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else _text(value)


def _share(value: object) -> str:
    v = number(value)
    return f"{v * 100:.1f} %" if v is not None else _text(value)


def _dur(value: object) -> str:
    s = number(value)
    if s is None:
        return _text(value)
    s = round(s)
    if s <= 0:
        return "none"
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h:,} h {m:02d} min"
    return f"{m} min" + (f" {sec:02d} s" if sec else "") if m else f"{sec} s"


def _when(value: object) -> str:
    """An instant as "YYYY-MM-DD HH:MM[:SS]" UTC; a date as itself; else the text itself."""
    at = instant(value)
    if at is None:
        return _text(value)
    if isinstance(value, str) and len(value) == len("YYYY-MM-DD"):
        return escape(value)
    return at.strftime("%Y-%m-%d %H:%M:%S" if at.second else "%Y-%m-%d %H:%M")


def _clock(value: object) -> str:
    at = instant(value)
    return _text(value) if at is None else at.strftime("%H:%M:%S" if at.second else "%H:%M")


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _rows(value: object) -> list[Mapping[str, Any]]:
    return [r for r in value if isinstance(r, Mapping)] if isinstance(value, list) else []
