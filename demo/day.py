"""The day scenario: the surplus-only day `curtaild demo` plays by default."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from demo.grid import GridOperator, until

if TYPE_CHECKING:
    from controller.app import Daemon

GRANT_LENGTH_S = 160.0  # the curtailment episode, a restore, then the 40 s lead to the end
CURTAIL_FRACTION = 0.40
TIGHTER_FRACTION = 0.30  # what the fast-shedding families can carry within 10 s
DEADLINE_S = 10.0
SETTLE_TIMEOUT_S = 30.0
# How long the tighter revision holds before the cancel: long enough for the farm's two
# deceiving units to be caught by their outlets, and for the allocation to retune the
# farm toward the most hashrate under the limit (the demo config's dwell is seconds).
HOLD_S = 30.0
# ... and then until the farm's retuning has settled (the allocation has nothing left to
# move and the hashrate it expects is measured), at most this much longer.
SETTLE_HOLD_S = 45.0


async def play(
    grid: GridOperator,
    daemon: Daemon,
    rated_kw: float,
    held: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """A Kazakhstan-style day: a grant wakes the farm, a curtailment to 40 % within 10 s,
    a tighter revision over HTTP, a hold, a cancel, and the grant's end. Returns what
    `held` found at the end of the hold (the hashrate the farm held under the limit)."""
    sup = daemon.supervisor
    now = grid.clock.now()
    grant_end = now + timedelta(seconds=GRANT_LENGTH_S)
    await grid.mqtt(
        grid.grant("korem-demo-h10", round(rated_kw * 1.05), grant_end),
        f"surplus grant {round(rated_kw * 1.05)} kW until {grant_end:%H:%M:%S}",
    )
    # Stock Antminers take ~90 s to full power; the episode starts once most are up.
    await until(lambda: (sup.draw.measured_w or 0) >= rated_kw * 1000 * 0.9, 25)
    # Limits are fractions of the farm's full draw: the slow families are still
    # ramping up (a stock Antminer needs ~90 s), and count at full draw in the plan.
    first = round(rated_kw * CURTAIL_FRACTION)
    await grid.mqtt(
        grid.curtailment("evt-demo-1", 1, first, DEADLINE_S),
        f"curtailment evt-demo-1 to {first} kW (40 % of the farm's {rated_kw:.0f} kW; "
        f"drawing {(sup.draw.measured_w or 0) / 1000:.0f} kW now) within {DEADLINE_S:g} s",
    )
    await grid.reached("evt-demo-1", 1, DEADLINE_S)
    await asyncio.sleep(2)
    tighter = round(rated_kw * TIGHTER_FRACTION)
    await grid.post(
        grid.curtailment("evt-demo-1", 2, tighter, DEADLINE_S),
        f"tighter revision r2 to {tighter} kW (30 %), over HTTP",
    )
    await grid.reached("evt-demo-1", 2, DEADLINE_S)
    # The grid holds the curtailment long enough for the farm's two deceiving units to
    # be caught by their outlets' measurements (their firmware says they sleep).
    await asyncio.sleep(HOLD_S)
    if held is not None:
        await settled(daemon, SETTLE_HOLD_S)
    found = held() if held is not None else None
    await grid.mqtt(grid.cancel("evt-demo-1", 3), "cancel evt-demo-1")
    remaining = (grant_end - grid.clock.now()).total_seconds()
    grid.say(f"waiting for the grant to end in {remaining:.0f} s")
    await asyncio.sleep(max(0.0, remaining))
    await until(lambda: not sup.pending_deadlines(), SETTLE_TIMEOUT_S)
    return found


async def settled(daemon: Daemon, timeout_s: float, quiet_s: float = 3.0) -> None:
    """Until the farm's retuning has settled, or `timeout_s`: nothing on the wire, the
    plan moving nothing, and the hashrate it expects measured (within 3 %), for
    `quiet_s` on end."""
    sup = daemon.supervisor

    def still() -> bool:
        plan, view = sup.plan, daemon.feed.latest
        if plan is None or view is None or sup.ledger.in_flight or plan.actions:
            return False
        expected = plan.expected_ths
        return expected is None or view.hashrate_ths >= 0.97 * expected

    quiet = 0.0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while quiet < quiet_s and loop.time() < deadline:
        await asyncio.sleep(0.5)
        quiet = quiet + 0.5 if still() else 0.0
