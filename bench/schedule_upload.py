"""What a month's auction schedule costs the event loop with a year of grants held, in CPU
time (the loop is blocked for as long as these run).

    python -m bench.schedule_upload [--held 8200] [--rows 744] [--repeats 3]

Prints, best of the repeats: `check_held` (the upload judged against the book) and
`Deadlines.absorb` of the upload's rows (their obligations, computed and journaled in one
transaction), with `--held` hourly grants already held.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.clock import FakeClock
from controller.core.signals import Grant, GridMode, GridPolicy, Held, SignalBook
from controller.intake.inbox import Inbox
from controller.intake.schedule import check_held, parse
from controller.loop.deadlines import Deadlines
from controller.record.journal import Journal
from controller.record.publish import Recorder

T0 = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
POLICY = GridPolicy(GridMode.SURPLUS_ONLY, cap_w=100_000_000, base_allowance_w=1_000_000)


def best(repeats: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times) * 1000


def held_book(n: int) -> SignalBook:
    """`n` hourly grants from the grid, after the upload's month."""
    base = T0 + 800 * HOUR
    held = {
        f"h{i}": Held(Grant(f"h{i}", 1, T0, 5_000_000, base + i * HOUR, base + (i + 1) * HOUR),
                      "kegoc", T0)
        for i in range(n)
    }  # fmt: skip
    return SignalBook(held, dict.fromkeys(held, (1, "grant")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--held", type=int, default=8_200)
    parser.add_argument("--rows", type=int, default=744)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    book = held_book(args.held)
    data = "start,end,kw,auction\n" + "".join(
        f"{(T0 + (i + 1) * HOUR).isoformat()},{(T0 + (i + 2) * HOUR).isoformat()},5000,k{i}\n"
        for i in range(args.rows)
    )
    schedule = parse(data.encode(), "text/csv", now=T0, cap_w=POLICY.cap_w)
    check_ms = best(args.repeats, lambda: check_held(schedule, book))
    absorb = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            journal = Journal(Path(tmp) / "journal.db")
            inbox = Inbox(journal=journal, clock=FakeClock(T0), keys={"kegoc": b"k"},
                          replay_window_s=30, book=book, publisher=Recorder())  # fmt: skip
            inbox.submit_schedule(schedule, by="bench", role="operator")
            deadlines = Deadlines(inbox=inbox, journal=journal, publisher=Recorder(),
                                  policy=POLICY, pending=(), known_keys=set())  # fmt: skip
            absorb.append(best(1, lambda: deadlines.absorb(inbox.admitted, "meter")))  # noqa: B023
            journal.close()
    print(f"{args.held} grants held, {args.rows} rows uploaded (CPU ms, best of {args.repeats})")
    print(f"  check_held          {check_ms:9.1f}")
    print(f"  Deadlines.absorb    {min(absorb):9.1f}")


if __name__ == "__main__":
    main()
