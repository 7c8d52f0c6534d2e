"""Approved pools in the pure core: what matches (tables and Hypothesis), a miner's verdict,
the `pools:` config's errors, and `enforce: sleep` through the operator's hold mechanism,
where the grid still wins and the heater floor counts only miners allowed to run."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.config import ConfigError
from controller.core import operator
from controller.core.model import ActionKind, MinerView, Plan
from controller.core.pools import (
    DEFAULT_PORTS,
    SCHEMES,
    Enforce,
    UrlError,
    admitted,
    approved_pool,
    judge,
    kept_asleep,
    parse_url,
    unknown,
)
from drivers.types import Mode, PoolConfig
from tests.conftest import load_site, site_dict
from tests.unit.test_safety import FROZEN, NOW, RULES, miner, run


def pool(url: str, user: str = "farm.1", *, enabled: bool = True) -> PoolConfig:
    return PoolConfig(url, user, 0, enabled=enabled)


def admits(entry: str, url: str, user: str = "farm.1", users: tuple[str, ...] = ()) -> bool:
    return admitted(pool(url, user), [approved_pool(entry, users)])


# -- what matches ----------------------------------------------------------------------------

MATCHES = [
    # scheme and host case, the port as a number, a trailing dot, credentials in the URL
    ("stratum+tcp://Pool.Example.KZ:3333", "STRATUM+TCP://pool.example.kz:3333"),
    ("stratum+tcp://pool.kz:3333", "stratum+tcp://pool.kz.:03333"),
    ("stratum+tcp://pool.kz:3333", "stratum+tcp://farm.1:x@pool.kz:3333"),
    # the scheme's default port, either side; no scheme is stratum+tcp; tls is ssl
    ("stratum+tcp://pool.kz", "stratum+tcp://pool.kz:3333"),
    ("stratum+ssl://pool.kz:443", "stratum+ssl://pool.kz"),
    ("stratum+tcp://pool.kz:3333", "pool.kz:3333"),
    ("stratum+ssl://pool.kz:443", "stratum+tls://pool.kz:443"),
    # a Stratum V2 pool key: compared where the entry gives one
    (
        "stratum2+tcp://v2.pool.kz:3336/9awtMD5KQgvRUh2y",
        "stratum2+tcp://v2.pool.kz:3336/9awtMD5KQgvRUh2y/",
    ),
    ("stratum2+tcp://v2.pool.kz:3336", "stratum2+tcp://v2.pool.kz:3336/9awtMD5KQgvRUh2y"),
    ("stratum+tcp://[2001:db8::1]:3333", "stratum+tcp://[2001:DB8::1]:3333"),
]
MISMATCHES = [
    ("stratum+tcp://pool.kz:3333", "stratum+tcp://pool.kz:3334"),  # another port
    ("stratum+tcp://pool.kz:3333", "stratum+tcp://pool.kz.evil.example:3333"),
    ("stratum+tcp://pool.kz:3333", "stratum+tcp://evilpool.kz:3333"),
    ("stratum+tcp://pool.kz:3333", "stratum+ssl://pool.kz:3333"),  # another scheme
    ("stratum+ssl://pool.kz:443", "pool.kz:443"),  # no scheme is plain stratum
    ("stratum+tcp://pool.kz", "stratum+tcp://pool.kz:80"),  # no port is 3333, not any
    (
        "stratum2+tcp://v2.pool.kz:3336/9awtMD5KQgvRUh2y",
        "stratum2+tcp://v2.pool.kz:3336/9AWTMD5KQGVRUH2Y",
    ),
    ("stratum2+tcp://v2.pool.kz:3336/9awtMD5KQgvRUh2y", "stratum2+tcp://v2.pool.kz:3336"),
    ("stratum+tcp://pool.kz:3333", "stratum+tcp://pool.kz:3333:1"),  # unreadable: proves nothing
    ("stratum+tcp://pool.kz:3333", "stratum+tcp://:3333"),
]


@pytest.mark.parametrize(("entry", "url"), MATCHES)
def test_these_urls_are_the_approved_pool(entry: str, url: str) -> None:
    assert admits(entry, url)


@pytest.mark.parametrize(("entry", "url"), MISMATCHES)
def test_these_urls_are_not_the_approved_pool(entry: str, url: str) -> None:
    assert not admits(entry, url)


def test_worker_prefixes_are_prefixes_and_case_matters() -> None:
    entry, url, users = "stratum+tcp://pool.kz:3333", "stratum+tcp://pool.kz:3333", ("farm.",)
    assert admits(entry, url, "farm.77", users)
    assert not admits(entry, url, "farmer.77", users)
    assert not admits(entry, url, "Farm.77", users)
    assert not admits(entry, url, "", users)
    assert admits(entry, url, "anyone", ())
    assert admits(entry, url, "b.1", ("a.", "b."))


def test_a_failover_pool_counts_and_a_disabled_one_does_not() -> None:
    approved = [approved_pool("stratum+tcp://pool.kz:3333")]
    ok, bad = "stratum+tcp://pool.kz:3333", "stratum+tcp://elsewhere.example:3333"
    assert judge([pool(ok), pool(bad, enabled=False)], approved).approved
    verdict = judge([pool(ok), pool(bad), pool(bad, "farm.2")], approved)
    assert not verdict.approved
    assert verdict.unapproved == (bad,)  # each URL once, as the miner reported it
    assert verdict.admitted == (True, False, False)
    assert judge([], approved).approved  # nothing configured mines nowhere


def test_only_sleep_keeps_a_miner_asleep() -> None:
    approved = [approved_pool("stratum+tcp://pool.kz:3333")]
    verdicts = {
        "m1": judge([pool("stratum+tcp://pool.kz:3333")], approved),
        "m2": judge([pool("stratum+tcp://x.example:1")], approved),
    }
    assert kept_asleep(verdicts, Enforce.ALARM) == {}
    kept = kept_asleep(verdicts, Enforce.SLEEP)
    assert list(kept) == ["m2"]
    assert "stratum+tcp://x.example:1" in kept["m2"]


# -- Hypothesis: normalization never admits another pool, and always admits the same one ---

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
hosts = st.lists(labels, min_size=1, max_size=4).map(".".join)
ports = st.integers(min_value=1, max_value=65_535)
users = st.from_regex(r"[A-Za-z0-9._-]{0,12}", fullmatch=True)


def _scramble(draw: st.DrawFn, text: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c for c in text)


@st.composite
def spellings(draw: st.DrawFn) -> tuple[str, str, int, str]:
    """An endpoint, and one of the many ways a miner may spell it."""
    scheme, host, port = draw(st.sampled_from(SCHEMES)), draw(hosts), draw(ports)
    shown_port = (
        ""
        if port == DEFAULT_PORTS[scheme] and draw(st.booleans())
        else ":" + "0" * draw(st.integers(0, 2)) + str(port)
    )
    creds = draw(st.sampled_from(["", "w.1@", "w.1:x@"]))
    dot = draw(st.sampled_from(["", "."]))
    shown_scheme = _scramble(draw, scheme)
    # Firmware that reports no scheme means plain stratum.
    bare = scheme == "stratum+tcp" and draw(st.booleans())
    prefix = "" if bare else f"{shown_scheme}://"
    url = f"{prefix}{creds}{_scramble(draw, host)}{dot}{shown_port}"
    return scheme, host, port, url


@settings(max_examples=300, deadline=None)
@given(spellings(), users)
def test_any_spelling_of_an_approved_pool_is_approved(
    spelled: tuple[str, str, int, str], user: str
) -> None:
    scheme, host, port, url = spelled
    assert admits(f"{scheme}://{host}:{port}", url, user)
    assert admits(f"{scheme}://{host}:{port}", url, f"farm.{user}", ("farm.",))


@settings(max_examples=300, deadline=None)
@given(spellings(), st.data())
def test_another_host_port_scheme_or_worker_is_never_approved(
    spelled: tuple[str, str, int, str], data: st.DataObject
) -> None:
    scheme, host, port, url = spelled
    other_host = data.draw(hosts.filter(lambda h: h != host))
    other_port = data.draw(ports.filter(lambda p: p != port))
    other_scheme = data.draw(st.sampled_from([s for s in SCHEMES if s != scheme]))
    for entry in (
        f"{scheme}://{other_host}:{port}",
        f"{scheme}://{host}:{other_port}",
        f"{other_scheme}://{host}:{port}",
    ):
        assert not admits(entry, url)
    assert not admits(f"{scheme}://{host}:{port}", url, "thief.1", ("farm.",))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["a.kz", "b.kz", "c.example"]), st.booleans()), max_size=6)
)
def test_a_miner_is_approved_exactly_when_every_enabled_pool_is(
    configured: list[tuple[str, bool]],
) -> None:
    approved = [approved_pool("stratum+tcp://a.kz:3333"), approved_pool("stratum+tcp://b.kz")]
    pools = [pool(f"stratum+tcp://{h}:3333", enabled=on) for h, on in configured]
    verdict = judge(pools, approved)
    bad = [p.url for p in pools if p.enabled and p.url.startswith("stratum+tcp://c.")]
    assert verdict.approved == (not bad)
    assert verdict.unapproved == tuple(dict.fromkeys(bad))


def test_urls_that_cannot_be_compared_say_why() -> None:
    for text, why in [
        ("", "empty"),
        ("pool.kz:3333", "no scheme"),
        ("http://pool.kz:80", "not one of"),
        ("stratum+tcp://pool.kz:0", "port"),
        ("stratum+tcp://pool.kz:70000", "port"),
        ("stratum+tcp://[::1:3333", "IPv6"),
        ("stratum+tcp://::1:3333", "brackets"),
    ]:
        with pytest.raises(UrlError, match=why):
            parse_url(text, approved=True)


# -- the config ------------------------------------------------------------------------------


def pools_site(tmp_path: Any, **pools: Any) -> Any:
    return load_site(site_dict(tmp_path, miners=2, pools=pools))


def test_the_pools_section_defaults_to_alarm_every_five_minutes(tmp_path: Any) -> None:
    cfg = pools_site(tmp_path, approved=[{"url": "stratum+tcp://pool.kz:3333"}]).config.pools
    assert (cfg.enforce, cfg.check_interval_s) == (Enforce.ALARM, 300.0)
    assert load_site(site_dict(tmp_path, miners=2)).config.pools is None


@pytest.mark.parametrize(
    ("section", "where"),
    [
        ({"approved": []}, "pools.approved"),
        ({"approved": [{"url": "http://pool.kz:80"}]}, "pools.approved[0].url"),
        ({"approved": [{"url": "stratum+tcp://pool.kz:99999"}]}, "pools.approved[0].url"),
        ({"approved": [{"url": "stratum+tcp://p.kz", "users": [""]}]}, "pools.approved[0].users"),
        ({"approved": [{"url": "stratum+tcp://p.kz"}], "enforce": "cut"}, "pools.enforce"),
        ({"approved": [{"url": "stratum+tcp://p.kz"}], "check_interval_s": 0}, "pools.check"),
        (
            {"approved": [{"url": "stratum+tcp://P.kz"}, {"url": "stratum+tcp://p.kz:3333"}]},
            "approved[1]",
        ),
        ({"approved": [{"url": "stratum+tcp://p.kz", "user": ["a"]}]}, "pools.approved[0].user"),
    ],
)
def test_a_bad_pools_section_names_the_field(
    tmp_path: Any, section: dict[str, Any], where: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        pools_site(tmp_path, **section)
    assert any(where in problem for problem in caught.value.problems), caught.value.problems


# -- enforce: sleep in the core --------------------------------------------------------------


def decide(
    views: list[MinerView], limit_w: int, kept: dict[str, str], **kw: Any
) -> tuple[Plan, frozenset[str]]:
    """What the supervisor does: mark the miners kept asleep, plan, apply the holds."""
    marked = operator.mark_held_asleep(tuple(views), {}, kept)
    planned = run(list(marked), limit_w, **kw)
    return operator.operator_steps(
        planned, marked, {}, operator.Automation(), NOW, kept_asleep=kept
    )


def test_a_miner_kept_asleep_is_put_to_sleep_and_never_woken(tmp_path: Any) -> None:
    warm = {"c1": (5.0, NOW), "c2": (5.0, NOW)}
    running = [miner(i, 25.0) for i in range(3)]
    result, slept = decide(
        running, 100_000, {"m01": "mines for an unapproved pool (x)"}, ambient=warm
    )
    assert {a.miner_id: a.kind for a in result.actions} == {"m01": ActionKind.SLEEP}
    assert slept == {"m01"}  # not a grid shed: it holds no wakes back
    assert "unapproved pool" in result.actions[0].reason
    asleep = [miner(i, 25.0, mode=Mode.SLEEPING) for i in range(3)]
    woken, _ = decide(asleep, 100_000, {"m01": "x"}, ambient=warm, due_in_s=None)
    assert {a.miner_id for a in woken.actions} == {"m00", "m02"}
    fixed, _ = decide(asleep, 100_000, {}, ambient=warm, due_in_s=None)
    assert {a.miner_id for a in fixed.actions} == {"m00", "m01", "m02"}


def test_the_grid_still_wins_over_a_miner_kept_asleep() -> None:
    warm = {"c1": (5.0, NOW), "c2": (5.0, NOW)}
    running = [miner(i, 30.0 - i) for i in range(4)]
    result, slept = decide(running, 3_500, {"m03": "x"}, ambient=warm)
    # m03, the most efficient, would have run on: the grid's three sheds stand beside
    # its sleep, and only its sleep is the rule's.
    assert {a.miner_id: a.kind for a in result.actions} == dict.fromkeys(
        ("m00", "m01", "m02", "m03"), ActionKind.SLEEP
    )
    assert slept == {"m03"}


def test_the_heater_floor_does_not_count_a_miner_kept_asleep_when_shedding() -> None:
    # Floor 6 kW at 2.1 kW lowered: three keepers, the most efficient first (m05, m04,
    # m03). m05 is kept asleep for its pools: it keeps no floor, so m02 does.
    views = [miner(i, 30.0 - i) for i in range(6)]
    plain, _ = decide(views, 7_000, {})
    lowered = {a.miner_id for a in plain.actions if a.kind is ActionKind.LOWER}
    assert lowered == {"m05", "m04", "m03"}
    kept, _ = decide(views, 7_000, {"m05": "x"})
    got = {a.miner_id: a.kind for a in kept.actions}
    assert got["m05"] is ActionKind.SLEEP
    assert {m for m, k in got.items() if k is ActionKind.LOWER} == {"m04", "m03", "m02"}
    assert not kept.alarms


def test_the_heater_floor_does_not_count_a_miner_kept_asleep_when_waking() -> None:
    # c1 at -35 °C wants 6 kW. A miner still running there but kept asleep is about to
    # sleep: the floor is made up without it (three gentle wakes at 2.1 kW, not two).
    views = [miner(0, 20.0)] + [
        miner(i, 25.0, mode=Mode.SLEEPING, boards_c=-30.0) for i in (1, 2, 3, 4)
    ]
    rules = replace(RULES, wake_hold_after_shed=timedelta(0))
    counted, _ = decide(views, 100_000, {}, rules=rules, due_in_s=None, ambient=FROZEN)
    floor_wakes = [a for a in counted.actions if "heater floor" in a.reason]
    kept, _ = decide(views, 100_000, {"m00": "x"}, rules=rules, due_in_s=None, ambient=FROZEN)
    kept_wakes = [a for a in kept.actions if "heater floor" in a.reason]
    assert len(kept_wakes) == len(floor_wakes) + 1 == 3
    assert {a.miner_id: a.kind for a in kept.actions}["m00"] is ActionKind.SLEEP


def test_a_run_hold_on_a_miner_kept_asleep_journals_the_rule_not_the_hold() -> None:
    warm = {"c1": (5.0, NOW), "c2": (5.0, NOW)}
    views = [miner(i, 25.0) for i in range(3)]
    until = NOW + timedelta(hours=1)
    kept = {"m01": "mines for an unapproved pool (x)"}
    for mode, why in (
        (operator.HoldMode.RUN, "sleep: mines for an unapproved pool (x)"),
        (operator.HoldMode.SLEEP, "sleep: held asleep by alice until 11:00:00: quiet"),
    ):
        holds = {"m01": operator.Hold("m01", mode, "quiet", "alice", NOW, until)}
        marked = operator.mark_held_asleep(tuple(views), holds, kept)
        planned = run(list(marked), 100_000, ambient=warm)
        plan, slept = operator.operator_steps(
            planned, marked, holds, operator.Automation(), NOW, kept_asleep=kept
        )
        assert [(a.miner_id, a.kind, a.reason) for a in plan.actions] == [
            ("m01", ActionKind.SLEEP, why)
        ]
        assert slept == {"m01"}


# -- any text a miner sends ends in a verdict ---------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "stratum+tcp://evil:³",
        "stratum+tcp://evil:٣٣٣٣",  # Arabic-Indic digits: isdigit(), and int() takes them
        "stratum+tcp://evil:" + "9" * 5000,  # longer than int() converts
        "stratum+tcp://evil\ud800:3333",
    ],
)
def test_hostile_urls_are_not_approved_and_raise_nothing_else(url: str) -> None:
    entry = [approved_pool("stratum+tcp://evil:3333")]
    verdict = judge([pool(url)], entry)
    assert verdict.unapproved == (url,)
    if "\ud800" not in url:
        with pytest.raises(UrlError):
            parse_url(url)


@settings(max_examples=500, deadline=None)
@given(
    text=st.one_of(
        st.text(),
        st.text(alphabet=st.characters(codec=None)),  # lone surrogates included
        st.builds(
            lambda host, port: f"stratum+tcp://{host}:{port}",
            st.text(max_size=10),
            st.text(alphabet=st.characters(categories=["Nd", "No", "Nl"]), max_size=6),
        ),
    )
)
def test_any_url_text_ends_in_a_verdict(text: str) -> None:
    try:
        endpoint = parse_url(text)
    except UrlError:
        return
    assert endpoint.port is None or 1 <= endpoint.port <= 65_535
    assert admitted(pool(text), [approved_pool("stratum+tcp://pool.kz:3333")]) in (True, False)


def test_a_reply_with_no_pool_is_unknown_never_approved() -> None:
    assert judge([], [approved_pool("stratum+tcp://pool.kz:3333")]).approved  # vacuous
    assert unknown([]) is not None
    assert unknown([pool("stratum+tcp://pool.kz:3333")]) is None
