"""A looping poller: adaptive ConcurrentJob pollers drain an in-memory outbox table.

The outbox stands in for a database table of messages waiting to be sent (the transactional
outbox pattern). Each poller execution claims one row and sends it (200), or answers 444 when
the table is empty. With ``adaptive=True`` the pool grows while rows keep coming, and backs
off and retires down to ``min_workers`` once the table is empty.

Run: ``python examples/poller.py`` (ends by itself after two bursts of rows, in a few seconds).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import anyio

from work import ConcurrentJob, Job, PerformWith, Status, StatusError


@dataclass
class Row:
    """One outbox row: a message to send."""

    id: int
    payload: str


class Outbox:
    """An in-memory outbox table: rows are inserted, claimed one at a time, then sent."""

    def __init__(self) -> None:
        self._rows: collections.deque[Row] = collections.deque()
        self._next_id = 1
        self.sent: list[int] = []

    def insert(self, count: int) -> None:
        """Insert ``count`` new rows."""
        for _ in range(count):
            self._rows.append(Row(self._next_id, f"message {self._next_id}"))
            self._next_id += 1

    def claim(self) -> Row | None:
        """Take the oldest unsent row, or None when there is none."""
        return self._rows.popleft() if self._rows else None

    @property
    def pending(self) -> int:
        """How many rows wait to be sent."""
        return len(self._rows)


outbox = Outbox()

pollers = ConcurrentJob(
    Job("drain_outbox"),
    perform_with=PerformWith.ONCE,  # adaptive pollers loop: one claim after another
    adaptive=True,
    min_workers=1,
    max_workers=4,
    start_interval=0.05,  # grow by at most one poller every 50 ms
    backoff_cap=0.2,  # an idle poller checks again at least every 200 ms
    retire_after=3,  # three empty polls in a row: retire (down to min_workers)
)


async def drain_outbox(job: Job) -> int:
    """Claim one row and send it; 444 (nothing to do) when the outbox is empty."""
    row = outbox.claim()
    if row is None:
        raise StatusError(Status.NO_RESPONSE, "outbox is empty")
    await anyio.sleep(0.01)  # pretend to call the message broker
    outbox.sent.append(row.id)
    return row.id


pollers.register("drain_outbox", drain_outbox)


async def watch_burst(burst: int, rows: int) -> None:
    """Insert a burst of rows, print progress until it is sent and the pool has shrunk."""
    outbox.insert(rows)
    print(f"burst {burst}: {rows} rows inserted")
    peak = pollers.running_workers
    with anyio.fail_after(30):
        while outbox.pending or pollers.running_workers > pollers.min_workers:
            await anyio.sleep(0.1)
            peak = max(peak, pollers.running_workers)
            print(f"  pending={outbox.pending:<4} pollers={pollers.running_workers}")
    print(f"burst {burst}: sent, peak pollers={peak}, idle pollers={pollers.running_workers}")


async def run() -> None:
    """Run the pollers through two bursts of work, then stop them."""
    async with pollers:
        for burst in (1, 2):
            await watch_burst(burst, rows=150)
    print(f"done: {len(outbox.sent)} rows sent, {len(set(outbox.sent))} distinct")


def main() -> None:
    """Entry point."""
    anyio.run(run)


if __name__ == "__main__":
    main()
