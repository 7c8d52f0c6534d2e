"""The HTML energy report's escaping: whatever text the journal hands it (a grant's id from
the grid, a pool URL from a miner, a site name from config), the document's elements are the
same as with plain text, and the text comes back as it was."""

from __future__ import annotations

from datetime import date
from html.parser import HTMLParser
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from controller.record.energy_html import render_energy_html
from tests.energy_samples import Day, energy_report

# Each slot holds text from outside; the values the renderer turns into sentences are left
# out (they change the words, not the escaping).
SLOTS = (
    "site", "from", "to", "measured_by", "hour.measured_by", "day.measured_by", "grant.id",
    "grant.source", "grant.start", "grant.end", "curtailment.id", "curtailment.revision",
    "curtailment.starts_at", "curtailment.end", "pool.miner_id", "pool.since", "pool.until",
    "pool.url", "pool.action", "chain.head",
)  # fmt: skip
SHOWN_AS_IS = ("site", "grant.id", "grant.source", "curtailment.id", "pool.miner_id", "pool.url")
SENTENCES = {"meter", "estimate", "mixed"}


def small_report(texts: dict[str, str]) -> dict[str, Any]:
    report = energy_report(
        [Day(date(2025, 3, 1), minutes=90, excess_kw=700, excess=range(10, 20), gap=range(40, 45))],
        grants=[{"granted_kwh": 10.0, "used_kwh": 5.0, "utilisation": 0.5, "excess_kwh": 0.0}],
        curtailments=[{"limit_kw": 300.0, "due_at": None, "excess_kwh_after_deadline": 1.5}],
        pools=[{"unapproved": []}],
    )
    for slot, text in texts.items():
        where, _, key = slot.rpartition(".")
        if slot == "pool.url":
            report["pools"][0]["unapproved"] = ["stratum+tcp://ok.example:3333", text]
            continue
        target = {
            "": report,
            "hour": report["hours"][0],
            "day": report["days"][0],
            "grant": report["grants"][0],
            "curtailment": report["curtailments"][0],
            "pool": report["pools"][0],
            "chain": report["chain"],
        }[where]
        target[key] = text
    return report


class Shape(HTMLParser):
    """The elements in order (tag and attribute names) and all text, unescaped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, ...]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, *sorted(name for name, _ in attrs)))

    def handle_endtag(self, tag: str) -> None:
        self.tags.append(("/" + tag,))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def shape(document: str) -> Shape:
    parser = Shape()
    parser.feed(document)
    parser.close()
    return parser


PLAIN = shape(render_energy_html(small_report(dict.fromkeys(SLOTS, "x"))))
hostile = st.one_of(
    st.text(),
    st.sampled_from(["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "</td>"]),
    st.text(alphabet="<>&\"'/=!- abc").map(lambda s: "<" + s),
).filter(lambda s: s not in SENTENCES)


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries(dict.fromkeys(SLOTS, hostile)))
@example(dict.fromkeys(SLOTS, "0\r\n0"))  # found by CI: a CR LF was counted twice
def test_report_text_never_becomes_markup(texts: dict[str, str]) -> None:
    document = render_energy_html(small_report(texts))
    found = shape(document)
    assert found.tags == PLAIN.tags
    text = lines("".join(found.text))
    for slot in SHOWN_AS_IS:
        assert lines(texts[slot]) in text


def lines(text: str) -> str:
    """Line ends as a browser reads them: CR LF and a lone CR are each one LF (the same rule
    on both sides, or a CR LF would count as two breaks in one and one in the other)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def test_plain_report_has_the_parts_it_promises() -> None:
    """The baseline the property compares with is itself a full report: a chart, an excess
    drawn, a gap, each table with its row."""
    starts = [t for t, *_ in PLAIN.tags]
    assert starts.count("svg") == 1 + 5  # the day's chart and the legend's five keys
    document = render_energy_html(small_report(dict.fromkeys(SLOTS, "x")))
    for testid in ("chart-excess", "chart-gap", "chart-draw", "chart-allowed", "grants", "pools"):
        assert f'data-testid="{testid}"' in document


def test_an_empty_report_says_so_and_a_broken_sum_is_stated() -> None:
    """Nothing recorded: each section says there is nothing, and no total is made up. Parts
    that do not add up are said not to, with the difference."""
    empty = render_energy_html({})
    for sentence in (
        "No hour in this period was recorded.",
        "No day in this period was recorded.",
        "No grant was held in this period.",
        "The totals are incomplete: they cannot be checked.",
        "This report carries no journal chain head.",
    ):
        assert sentence in empty
    report = small_report({})
    report["totals"]["grid_kwh"] += 2.5
    assert "The parts do not add up: they differ by 2.500 kWh." in render_energy_html(report)


def test_where_the_estimate_and_gaps_are_stated() -> None:
    report = small_report({})
    report["measured_by"] = "estimate"
    document = render_energy_html(report)
    assert "Estimated, not measured:" in document
    assert "The meter gave no reading for 5 min</strong>" in document
    report["totals"]["gap_s"] = 0.0
    assert "The meter was read throughout: no gaps." in render_energy_html(report)
