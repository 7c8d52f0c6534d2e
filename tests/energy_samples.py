"""Energy report dicts (the shape contracts fix: see controller/record/energy_html.py) and a
fixed compliance source, built the way the energy account would: minute by minute from a
draw, an allowance and grants, so that the parts add up and the tests can compute what the
page must show from the same numbers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

FIELDS = (
    "grid_kwh",
    "within_grants_kwh",
    "base_allowance_kwh",
    "excess_kwh",
    "exempt_generation_kwh",
    "allowed_kwh",
    "gap_s",
    "estimated_s",
)
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Day:
    """One day of minutes: the draw (kW) and the base allowance all day, a grant's extra kW
    over `grant` (minute indexes), the draw raised to `excess_kw` over `excess`, no meter
    over `gap`, and the firmware's estimate over `estimated`."""

    on: date
    draw_kw: float = 400.0
    base_kw: float = 500.0
    grant_kw: float = 0.0
    grant: range = range(0)
    excess_kw: float = 0.0
    excess: range = range(0)
    gap: range = range(0)
    estimated: range = range(0)
    minutes: int = 1440


@dataclass
class _Acc:
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FIELDS, 0.0))

    def add(self, part: Mapping[str, float]) -> None:
        for name in FIELDS:
            self.sums[name] += part[name]

    def out(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in self.sums.items()}


def _minute(d: Day, i: int) -> tuple[dict[str, Any], dict[str, float]]:
    granted = d.grant_kw if i in d.grant else 0.0
    allowed = d.base_kw + granted
    grid: float | None = None if i in d.gap else d.excess_kw if i in d.excess else d.draw_kw
    h = 1 / 60
    part = dict.fromkeys(FIELDS, 0.0)
    part["allowed_kwh"] = allowed * h
    if grid is None:
        part["gap_s"] = 60.0
    else:
        kwh = grid * h
        part["grid_kwh"] = kwh
        part["base_allowance_kwh"] = min(kwh, d.base_kw * h)
        part["within_grants_kwh"] = min(kwh - part["base_allowance_kwh"], granted * h)
        part["excess_kwh"] = kwh - part["base_allowance_kwh"] - part["within_grants_kwh"]
        part["estimated_s"] = 60.0 if i in d.estimated else 0.0
    at = datetime.combine(d.on, datetime.min.time(), UTC) + i * MINUTE
    point = {
        "start": at.isoformat(),
        "grid_kw": grid,
        "allowed_kw": allowed,
        "granted_kw": granted,
        "excess_kwh": round(part["excess_kwh"], 6),
    }
    return point, part


def energy_report(
    days: Sequence[Day],
    *,
    site: str = "site-kz-01",
    grants: Sequence[Mapping[str, Any]] = (),
    curtailments: Sequence[Mapping[str, Any]] = (),
    pools: Sequence[Mapping[str, Any]] = (),
    head: str | None = "9f" * 32,
    rows: int = 12_345,
) -> dict[str, Any]:
    total = _Acc()
    hours: list[dict[str, Any]] = []
    out_days: list[dict[str, Any]] = []
    for d in days:
        day, series = _Acc(), []
        hour, hour_by = _Acc(), set()
        for i in range(d.minutes):
            point, part = _minute(d, i)
            series.append(point)
            day.add(part)
            hour.add(part)
            hour_by.add("estimate" if part["estimated_s"] else "meter")
            if i % 60 == 59 or i == d.minutes - 1:
                start = datetime.combine(d.on, datetime.min.time(), UTC) + (i // 60) * 60 * MINUTE
                hours.append(
                    {
                        "start": start.isoformat(),
                        "end": (start + 60 * MINUTE).isoformat(),
                        **hour.out(),
                        "measured_by": _by(hour_by),
                    }
                )
                hour, hour_by = _Acc(), set()
        total.add(day.sums)
        by = _by({"estimate" if i in d.estimated else "meter" for i in range(d.minutes)})
        out_days.append(
            {"date": d.on.isoformat(), **day.out(), "measured_by": by, "series": series}
        )
    start = datetime.combine(days[0].on, datetime.min.time(), UTC)
    end = datetime.combine(days[-1].on, datetime.min.time(), UTC) + timedelta(days=1)
    return {
        "site": site,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "measured_by": _by({d["measured_by"] for d in out_days}),
        "totals": total.out(),
        "hours": hours,
        "days": out_days,
        "grants": [dict(g) for g in grants],
        "curtailments": [dict(c) for c in curtailments],
        "pools": [dict(p) for p in pools],
        "chain": {"head": head, "rows": rows},
    }


def _by(kinds: set[str]) -> str:
    return "mixed" if len(kinds) > 1 else next(iter(kinds), "meter")


def sample_report() -> dict[str, Any]:
    """Three days: a grant on the first two, an excess on the second, a meter gap and an
    estimated hour on the third; two grants, two curtailments (one overrun), two miners on
    unapproved pools."""
    d1, d2, d3 = date(2025, 3, 1), date(2025, 3, 2), date(2025, 3, 3)
    days = [
        Day(d1, grant_kw=300.0, grant=range(600, 840)),
        Day(d2, grant_kw=300.0, grant=range(600, 720), excess_kw=900.0, excess=range(780, 810)),
        Day(d3, gap=range(120, 165), estimated=range(300, 360)),
    ]
    grants = [
        {
            "id": "korem-2025-03-01-h10",
            "source": "schedule:auction-881",
            "start": "2025-03-01T10:00:00+00:00",
            "end": "2025-03-01T14:00:00+00:00",
            "granted_kwh": 1200.0,
            "used_kwh": 0.0,
            "utilisation": 0.0,
            "excess_kwh": 0.0,
        },
        {
            "id": "korem-2025-03-02-h10",
            "source": "grid-push",
            "start": "2025-03-02T10:00:00+00:00",
            "end": "2025-03-02T12:00:00+00:00",
            "granted_kwh": 600.0,
            "used_kwh": 450.0,
            "utilisation": 0.75,
            "excess_kwh": 0.0,
        },
    ]
    curtailments = [
        {
            "id": "evt-0017",
            "revision": 1,
            "limit_kw": 350.0,
            "starts_at": "2025-03-02T13:00:00+00:00",
            "due_at": "2025-03-02T13:00:10+00:00",
            "end": "2025-03-02T13:30:00+00:00",
            "excess_kwh_after_deadline": 275.0,
        },
        {
            "id": "evt-0018",
            "revision": 2,
            "limit_kw": 200.0,
            "starts_at": "2025-03-03T08:00:00+00:00",
            "due_at": "2025-03-03T08:00:30+00:00",
            "end": None,
            "excess_kwh_after_deadline": 0.0,
        },
    ]
    pools: list[dict[str, Any]] = [
        {
            "miner_id": "m007",
            "since": "2025-03-01T06:00:00+00:00",
            "until": None,
            "unapproved": ["stratum+tcp://pool.example.org:3333"],
            "action": "alarm",
        },
        {
            "miner_id": "m011",
            "since": "2025-03-02T09:00:00+00:00",
            "until": "2025-03-02T11:30:00+00:00",
            "unapproved": ["stratum+tcp://other.example.net:443", "stratum+ssl://x.example:1"],
            "action": "sleep",
        },
    ]
    return energy_report(days, grants=grants, curtailments=curtailments, pools=pools)


class FixedCompliance:
    """Stands in for the energy account at the API boundary: GET /api/v1/compliance's
    answer (contracts' shape), with the `now` it was asked for recorded."""

    def __init__(self, *, verified: bool | None = True) -> None:
        self.asked: list[datetime] = []
        self.answer: dict[str, Any] = {
            "today": totals(800.4, 400.0, 34.7),
            "month": totals(20000.6, 25000.0, 678.4),
            "grants": [
                {
                    "id": "korem-h10",
                    "source": "schedule:auction-881",
                    "granted_kwh": 1200.0,
                    "used_kwh": 900.0,
                    "utilisation": 0.75,
                },
                {
                    "id": "korem-h14",
                    "source": "grid-push",
                    "granted_kwh": 300.0,
                    "used_kwh": 0.0,
                    "utilisation": None,
                },
            ],
            "excess_events": [
                {
                    "at": "2025-03-02T13:05:00+00:00",
                    "kwh": 34.7,
                    "limit_kw": 350.0,
                    "reason": "curtailment evt-0017 r1 after its deadline",
                }
            ],
            "unapproved_pools": [
                {
                    "miner_id": "m007",
                    "unapproved": ["stratum+tcp://pool.example.org:3333"],
                    "action": "alarm",
                    "since": "2025-03-01T06:00:00+00:00",
                }
            ],
            "chain": {
                "verified": verified,
                "rows": 4321,
                "head": "ab" * 32,
                "checked_at": "2025-03-02T13:00:00+00:00",
                "problem": None if verified is not False else "row 17 (signals) was changed",
            },
        }

    def compliance(self, now: datetime) -> dict[str, Any]:
        self.asked.append(now)
        return self.answer


def totals(grants: float, base: float, excess: float) -> dict[str, float]:
    """Figures that add up, none of them halfway between two tenths (Python and the
    browser round those differently)."""
    return {
        "grid_kwh": round(grants + base + excess, 3),
        "within_grants_kwh": grants,
        "base_allowance_kwh": base,
        "excess_kwh": excess,
        "exempt_generation_kwh": 12.0,
        "allowed_kwh": grants + base + 100.0,
        "gap_s": 120.0,
        "estimated_s": 0.0,
    }
