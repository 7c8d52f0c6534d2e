"""The most hashrate under the allowed power: each miner's setting chosen on its curve.

A multiple-choice knapsack: every miner takes exactly one of its allowed settings; the sum
of their draws stays within the allowed power; the sum of their hashrates is the most we
can find. Solved by the greedy walk on marginal TH/s per W over each curve's upper hull:

- Every free miner starts at its lowest allowed draw (usually asleep); pinned miners hold
  their one setting. What remains of the allowed power is the budget.
- The hull's upgrades, all miners together, are taken in falling TH/s per W; each is taken
  if it fits in what is left of the budget, else skipped (a later, smaller one may fit).
  Waking is one such upgrade: from asleep straight to the hull's next point, compared by
  its average TH/s per W including the sleep draw it replaces. A first step that is less
  efficient than the step after it (a costly wake) is under the hull and skipped.
- A fill pass then moves any miner to any allowed setting with more hashrate whose extra
  draw still fits (largest gain first): it spends what the skips left over.

Bound: the greedy's first skip is where the LP relaxation (each miner's hull, fractional
upgrades allowed) takes a fraction of one upgrade and stops, so
    greedy >= optimum - (the hashrate of the largest single hull upgrade),
one miner's wake at worst; exact when every upgrade has the same draw (integer resource
allocation with concave returns, Gross 1956). tests/unit/test_allocation.py checks both
against brute force. Miners of one curve (one Curve object, and one allowed set) are walked
as a group: their upgrades have the same slopes, so the walk costs the number of distinct
curves, not of miners.

Then from the current settings toward that target: a target whose hashrate is less than
`hysteresis` above the current settings' is not started (a noisy meter moves the allowed
power by a few hundred watts, which must not retune anything); changes are made at most
`max_changes` per call, in an order that never takes the draw above the allowed power when
it starts within it (a lowering frees power before a raise spends it).

Pure: no clock, no I/O. Pins express everything else: operator holds, cold rules' floor
keepers, pools-kept-asleep, miners within their dwell time or still changing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from controller.core.curves import Curve, upper_hull

SLACK_W = 1e-9


class MinerChoice(NamedTuple):
    """One miner as the allocator sees it. `allowed`: the settings (indices into its
    curve) it may take; one index pins it; None: every setting."""

    miner_id: str
    curve: Curve
    current: int
    allowed: tuple[int, ...] | None = None


class Move(NamedTuple):
    """One change: a miner from one setting to another, and why."""

    miner_id: str
    from_index: int
    to_index: int
    delta_w: float
    delta_ths: float
    reason: str


@dataclass(frozen=True, slots=True)
class Allocation:
    """The target every miner converges to, and the changes to make now."""

    target: tuple[int, ...]  # setting index per miner, in the order given
    moves: tuple[Move, ...]  # at most max_changes, in the order to make them
    target_w: float
    target_ths: float
    current_w: float
    current_ths: float
    feasible: bool  # False: even every free miner at its lowest draw is over the budget
    held: bool  # the gain was under the hysteresis: nothing moves


def allocate(
    miners: Sequence[MinerChoice],
    allowed_w: float,
    *,
    hysteresis: float = 0.01,
    max_changes: int | None = None,
) -> Allocation:
    """Choose each miner's setting for the most hashrate within `allowed_w` (the limit
    after margin and unexplained draw), and the first changes toward it."""
    groups: dict[tuple[int, tuple[int, ...] | None], _Group] = {}
    # A nanowatt of slack: draws summed in another order differ in the last bits, and an
    # upgrade that fits exactly must not be refused for it (CI found 99.99999999999999 W
    # refusing a 100 W wake).
    budget = float(allowed_w) + SLACK_W
    current_w = current_ths = 0.0
    misplaced = False  # a miner sits where it may not stay (a new pin): it must move
    for pos, m in enumerate(miners):
        settings = m.curve.settings
        if not 0 <= m.current < len(settings):
            raise ValueError(f"{m.miner_id}: current setting {m.current} is not on its curve")
        if m.allowed is not None and m.current not in m.allowed:
            misplaced = True
        here = settings[m.current]
        current_w += here.power_w
        current_ths += here.hashrate_ths
        key = (id(m.curve), m.allowed)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(m.curve, m.allowed, m.miner_id)
        group.members.append(pos)
        budget -= group.base_w
    feasible = budget >= 0
    if feasible:
        _walk(list(groups.values()), budget)
    target = [0] * len(miners)
    for group in groups.values():
        group.assign(miners, target)
    target_w = target_ths = 0.0
    for m, t in zip(miners, target, strict=True):
        s = m.curve.settings[t]
        target_w += s.power_w
        target_ths += s.hashrate_ths
    # Held: within the limit, every miner where it may be, and too little to gain. A
    # current allocation better than the greedy's target (it is within a bound of the best,
    # not always the best) is held too.
    held = (
        not misplaced
        and current_w <= allowed_w
        and target_ths - current_ths <= hysteresis * current_ths
    )
    moves = () if held else _moves(miners, target, allowed_w - current_w, max_changes)
    return Allocation(
        tuple(target), moves, target_w, target_ths, current_w, current_ths, feasible, held
    )


class _Group:
    """Miners on one curve with one allowed set: how many sit at each setting."""

    __slots__ = ("allowed", "base_w", "counts", "curve", "hull", "members")

    def __init__(self, curve: Curve, allowed: tuple[int, ...] | None, miner_id: str) -> None:
        if allowed is not None:
            bad = [i for i in allowed if not 0 <= i < len(curve.settings)]
            if bad or not allowed:
                raise ValueError(f"{miner_id}: allowed settings {allowed} are not on its curve")
        self.curve = curve
        self.allowed = allowed
        self.hull = curve.hull if allowed is None else upper_hull(curve.settings, allowed)
        self.base_w = curve.settings[self.hull[0]].power_w
        self.members: list[int] = []
        self.counts: dict[int, int] = {}

    def assign(self, miners: Sequence[MinerChoice], target: list[int]) -> None:
        """Hand the counts out to the members, keeping each where it is when its current
        setting is among them: the fewest changes for the same allocation."""
        left = dict(self.counts) if self.counts else {self.hull[0]: len(self.members)}
        rest = []
        for pos in self.members:
            cur = miners[pos].current
            if left.get(cur, 0) > 0:
                left[cur] -= 1
                target[pos] = cur
            else:
                rest.append(pos)
        slots = (i for i, n in left.items() for _ in range(n))
        for pos, i in zip(rest, slots, strict=True):
            target[pos] = i


def _walk(all_groups: list[_Group], budget: float) -> None:
    """The greedy walk and the fill pass, on group counts."""
    steps: list[tuple[float, int, int]] = []  # (-TH/s per W, group, hull level)
    for g, group in enumerate(all_groups):
        group.counts = {group.hull[0]: len(group.members)}
        s = group.curve.settings
        key = -math.inf
        for level in range(1, len(group.hull)):
            a, b = s[group.hull[level - 1]], s[group.hull[level]]
            # A hull's slopes fall; where rounding makes one rise by a hair, it is taken as
            # equal, so the group's levels are walked in order (a level reached early would
            # find no miner waiting below it and be skipped for good).
            key = max(key, (a.hashrate_ths - b.hashrate_ths) / (b.power_w - a.power_w))
            steps.append((key, g, level))
    steps.sort()  # steepest first; a group's levels in order
    for _, g, level in steps:
        group = all_groups[g]
        s = group.curve.settings
        low, high = group.hull[level - 1], group.hull[level]
        waiting = group.counts.get(low, 0)
        cost = s[high].power_w - s[low].power_w
        n = min(waiting, int(budget // cost))
        if n <= 0:
            continue
        group.counts[low] = waiting - n
        group.counts[high] = group.counts.get(high, 0) + n
        budget -= n * cost
    _fill(all_groups, budget)


def _fill(groups: list[_Group], budget: float) -> None:
    """Spend what the walk's skips left: miners to allowed settings with more hashrate
    whose extra draw fits, the largest gain first (one pass over the candidates)."""
    found: list[tuple[float, int, int, int, float]] = []  # (-gain, group, from, to, cost)
    for g, group in enumerate(groups):
        s = group.curve.settings
        options = range(len(s)) if group.allowed is None else group.allowed
        for here, n in group.counts.items():
            if n <= 0:
                continue
            base = s[here]
            for there in options:
                gain = s[there].hashrate_ths - base.hashrate_ths
                cost = s[there].power_w - base.power_w
                if gain > 0 and cost <= budget:
                    found.append((-gain, g, here, there, cost))
    found.sort()
    for _, g, here, there, cost in found:
        counts = groups[g].counts
        waiting = counts.get(here, 0)
        if waiting <= 0 or cost > budget:
            continue
        n = waiting if cost <= 0 else min(waiting, int(budget // cost))
        counts[here] = waiting - n
        counts[there] = counts.get(there, 0) + n
        budget -= n * cost


def _moves(
    miners: Sequence[MinerChoice], target: Sequence[int], spare: float, max_changes: int | None
) -> tuple[Move, ...]:
    """The changes toward `target`, in an order whose every prefix keeps the draw within
    the allowed power (`spare` is what is left of it now): over the limit, lowerings first,
    most watts freed first; within it, a raise whenever the best one fits, else a lowering."""
    ups: list[Move] = []
    downs: list[Move] = []
    for m, t in zip(miners, target, strict=True):
        if t == m.current:
            continue
        a, b = m.curve.settings[m.current], m.curve.settings[t]
        dw, dh = b.power_w - a.power_w, b.hashrate_ths - a.hashrate_ths
        move = Move(m.miner_id, m.current, t, dw, dh, "")
        (ups if dw > 0 else downs).append(move)
    ups.sort(key=lambda mv: -mv.delta_ths / mv.delta_w)  # best TH/s per W first
    # Within the limit: the lowerings that cost least hashrate per watt freed first.
    downs.sort(key=lambda mv: (mv.delta_w, mv.delta_ths) if spare < 0 else _loss_per_w(mv))
    limit = len(ups) + len(downs) if max_changes is None else max_changes
    done: list[Move] = []
    u = d = 0
    while len(done) < limit and (u < len(ups) or d < len(downs)):
        if spare >= 0 and u < len(ups) and ups[u].delta_w <= spare:
            mv, u = ups[u], u + 1
        elif d < len(downs):
            mv, d = downs[d], d + 1
        else:
            break  # the raises left do not fit yet: a later call takes them
        spare -= mv.delta_w
        done.append(mv._replace(reason=_reason(mv)))
    return tuple(done)


def _loss_per_w(mv: Move) -> float:
    return mv.delta_ths / mv.delta_w if mv.delta_w < 0 else 0.0


def _reason(mv: Move) -> str:
    if mv.delta_w > 0:
        return f"retune: +{1000 * mv.delta_ths / mv.delta_w:.1f} TH/s per kW"
    if mv.delta_w < 0:
        return f"retune: frees {-mv.delta_w:.0f} W for {-mv.delta_ths:.1f} TH/s"
    return f"retune: +{mv.delta_ths:.1f} TH/s at the same draw"


def sleep_only(curves: Sequence[Curve], allowed_w: float) -> tuple[float, float]:
    """What a sleep-only plan holds within `allowed_w` on the same curves, as (W, TH/s):
    every miner at its top setting (its default, rated), the least efficient asleep until
    the draw fits. The yardstick the allocation's gain is measured against."""
    draw = sum(c.settings[-1].power_w for c in curves)
    ths = sum(c.settings[-1].hashrate_ths for c in curves)
    order = sorted(curves, key=lambda c: c.settings[-1].hashrate_ths / c.settings[-1].power_w)
    for curve in order:
        if draw <= allowed_w:
            break
        top, asleep = curve.settings[-1], curve.settings[0]
        draw -= top.power_w - asleep.power_w
        ths -= top.hashrate_ths - asleep.hashrate_ths
    return draw, ths
