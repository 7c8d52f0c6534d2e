"""What the hash chain costs the journal's writers, in CPU time (not wall time: the fsync
of each commit is the same with or without it).

    python -m bench.chain_cost [--rows 10000] [--repeats 7]

Prints, best of the repeats: hashing a batch of command results alone (`link_rows`), a
whole `record_commands` batch through the journal, the same rows inserted unchained
(the journal's writes as they were before the chain), and one `record_decision` of a
10,000-miner shed (one row, one hash).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from controller.core.model import Action, ActionKind, Limit, Plan
from controller.record import chain
from controller.record.journal import CommandRecord, Journal, _ts

T0 = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)


def best(repeats: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    records = [
        CommandRecord(17, f"c1-{i:05d}", "sleep", T0, T0, "ok", None) for i in range(args.rows)
    ]
    rows = [
        (r.decision_seq, r.miner_id, r.action, T0.isoformat(), T0.isoformat(), r.outcome, None)
        for r in records
    ]
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp) / "j.db")
        hashing = best(args.repeats, lambda: chain.link_rows("commands", chain.Head(), 1, rows))
        chained = best(args.repeats, lambda: journal.record_commands(records))

        def unchained() -> None:  # the write as it was before the chain, for comparison
            with journal._tx() as db:  # noqa: SLF001
                db.executemany(
                    "INSERT INTO commands (decision_seq, miner_id, action, started_at,"
                    " finished_at, outcome, detail) VALUES (?,?,?,?,?,?,?)",
                    [
                        (r.decision_seq, r.miner_id, r.action, _ts(r.started_at),
                         _ts(r.finished_at), r.outcome, r.detail)
                        for r in records
                    ],
                )  # fmt: skip

        plain = best(args.repeats, unchained)
        plan = Plan(
            tuple(Action(f"c1-{i:05d}", ActionKind.SLEEP, "shed") for i in range(args.rows)),
            0,
            0,
            feasible=True,
        )
        decision = best(
            args.repeats,
            lambda: journal.record_decision(at=T0, cause="signal", limit=Limit(0, ()), plan=plan),
        )
        journal.close()
    print(f"{args.rows} command rows, CPU ms (best of {args.repeats}):")
    print(f"  hashing alone (link_rows)        {hashing:7.1f}")
    print(f"  record_commands, chained         {chained:7.1f}")
    print(f"  the same rows, unchained         {plain:7.1f}")
    print(f"  added by the chain               {chained - plain:7.1f}")
    print(f"record_decision, {args.rows} actions (one row) {decision:7.1f}")


if __name__ == "__main__":
    main()
