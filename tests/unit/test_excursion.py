"""When a draw over the limit, measured while a shed is on the wire, is an excursion the
loop must plan for at once rather than the shed still landing (chaos 'blip')."""

from __future__ import annotations

from controller.core.closed_loop import Excursion, sent, watch

LIMIT = 471_000
QUIET = Excursion()


def run(state: Excursion, *samples: int | None, in_flight: bool = True) -> Excursion:
    for sample in samples:
        state = watch(state, sample, LIMIT, margin_w=5_000, in_flight=in_flight)
    return state


def test_a_shed_landing_over_the_limit_is_no_excursion() -> None:
    # Sent at 900 kW: the ramps walk the draw down, over the limit all the while.
    assert not run(sent(QUIET, 900_000), 880_000, 800_000, 700_000, 600_000, 500_000).on


def test_a_draw_that_rises_from_the_lowest_since_the_send_is_one() -> None:
    # Sent over the limit, the shed brought the draw under it; a blip then brings it back
    # over, below where it was at the send: judged from the lowest since, not the send.
    state = run(sent(QUIET, 480_000), 440_000, 400_000, 400_000, 475_000)
    assert state.on
    assert state.lowest_w == 400_000
    assert not run(sent(QUIET, 480_000), 475_000).on  # from the send, it has not risen
    # It lasts while the draw is over the limit and commands are out, whatever it does.
    assert run(state, 472_000).on
    assert not run(state, 470_000).on  # back under the limit
    assert not run(state, 900_000, in_flight=False).on  # the wire is quiet: plans go on
    # The plans it makes go on the wire: it lasts through them, judged from there after.
    again = sent(state, 475_000)
    assert again.on
    assert again.lowest_w == 475_000
    assert not run(again, 470_000).on


def test_a_rise_within_the_margin_or_one_per_cent_is_noise() -> None:
    state = run(sent(QUIET, 470_000), 468_000, 468_000)
    assert not run(state, 468_000 + 4_710).on  # over the limit, risen 1 % of it
    assert run(state, 468_000 + 5_001).on  # risen beyond the 5 kW margin


def test_one_low_sample_does_not_lower_what_a_rise_is_judged_from() -> None:
    # A bad read (or a moment's dip) between two at 470 kW: counted at the higher of it
    # and the one before, so 473 kW is no rise from 470 kW.
    state = run(sent(QUIET, 480_000), 470_000, 300_000, 470_000)
    assert state.lowest_w == 470_000
    assert not run(state, 473_000).on
    # Two low samples in a row are a real low.
    assert run(sent(QUIET, 480_000), 470_000, 300_000, 300_000, 473_000).on


def test_no_meter_no_excursion() -> None:
    # A stale meter or a site without one: no rise can be judged, and none is carried.
    state = run(sent(QUIET, 400_000), 400_000, 900_000)
    assert state.on
    assert not run(state, None).on
    assert not run(sent(QUIET, None), None, None).on
    # Sent before the meter was read: judged from the first reading on.
    assert not run(sent(QUIET, None), 900_000).on
    assert run(sent(QUIET, None), 400_000, 400_000, 900_000).on
