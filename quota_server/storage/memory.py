"""`memory://`: persists nothing; keeps usage rows and events in this process.

For benchmarks (the memory-only baseline) and experiments. A restart loses every account; the
server logs a warning at startup. Never use it where money is real.

It keeps no journal: a journal record is checked (sequence, fencing) and dropped, keeping only
the last one (to recognise a retry) and the latest snapshot. A server reads a store's journal
once, at startup, and a memory:// store starts empty with its process, so nothing reads it; but
holding every record until the next snapshot (gigabytes under Batch load) made the baseline pay
for memory that no backend holds (SQLite and Redis write records out). `load()` of a store that
has dropped records refuses (StorageError) rather than recover an incomplete state.
"""

from __future__ import annotations

import bisect

from .base import (
    EventRow,
    Fenced,
    InvalidCursor,
    LeaseHeld,
    Recovered,
    SequenceError,
    Storage,
    StorageError,
    UsageChunk,
    UsageRow,
    check_batch,
    unpack_payloads,
    check_limit,
)


class MemoryStorage(Storage):
    """The storage interface over plain Python containers (one process, no durability)."""

    def __init__(self) -> None:
        self._epoch = 0
        self._owner: str | None = None
        self._last_seq = 0
        self._last_record = b""
        self._snapshot: tuple[int, bytes] | None = None
        # account -> its usage chunks as appended, sorted by (at_ms, first n): (at_ms, last n,
        # rows, packed payloads). A chunk is unpacked only when a page reads it, as the durable
        # backends do: the baseline's event loop does not pay for what they do elsewhere, and
        # holds one small object per flush and account instead of two per row.
        self._usage: dict[str, list[tuple[int, int, int, bytes]]] = {}
        self._usage_counter = 0
        self._events: list[EventRow] = []

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def acquire_lease(self, owner: str, ttl_ms: int) -> int:
        if self._owner is not None and self._owner != owner:
            raise LeaseHeld(f"held by {self._owner}")
        self._owner = owner
        self._epoch += 1
        return self._epoch

    async def renew_lease(self, epoch: int, ttl_ms: int) -> None:
        if epoch != self._epoch or self._owner is None:
            raise Fenced(f"epoch {epoch} is not current")

    async def release_lease(self, epoch: int) -> None:
        if epoch == self._epoch:
            self._owner = None

    async def load(self) -> Recovered:
        snap_seq, blob = self._snapshot if self._snapshot else (0, None)
        if self._last_seq > snap_seq:
            raise StorageError(f"memory:// keeps no journal: records {snap_seq + 1}..{self._last_seq} are gone "
                               "(a memory:// store is not recovered)")
        return Recovered(snapshot=blob, snapshot_seq=snap_seq, records=[])

    async def append(self, epoch: int, seq: int, record: bytes, usage: list[UsageRow], events: list[EventRow],
                     packed: list[UsageChunk] = ()) -> None:
        chunks = check_batch(seq, usage, events, packed)
        if epoch != self._epoch or self._owner is None:
            raise Fenced(f"epoch {epoch} is not current")
        if seq <= self._last_seq:
            if seq == self._last_seq and self._last_record == record:
                return  # a retry of the last append
            raise SequenceError(f"seq {seq} already written")
        if seq != self._last_seq + 1:
            raise SequenceError(f"seq {seq} after {self._last_seq}")
        if events and self._events and events[0].event_id <= self._events[-1].event_id:
            raise SequenceError("event ids must increase")
        self._last_record = record
        self._last_seq = seq
        counter = self._usage_counter
        for account_id, at_ms, n_rows, blob in chunks:
            counter += n_rows
            item = (at_ms, counter, n_rows, blob)  # rows counter - n_rows + 1 .. counter
            rows = self._usage.get(account_id)
            if rows is None:
                self._usage[account_id] = [item]
            elif rows[-1][0] <= at_ms:  # the usual case: time moves forward
                rows.append(item)
            else:
                bisect.insort(rows, item)
        self._usage_counter = counter
        self._events.extend(events)

    async def write_snapshot(self, epoch: int, seq: int, blob: bytes) -> None:
        if epoch != self._epoch or self._owner is None:
            raise Fenced(f"epoch {epoch} is not current")
        if not (self._snapshot[0] if self._snapshot else 0) <= seq <= self._last_seq:
            raise SequenceError(f"snapshot seq {seq} out of range")
        self._snapshot = (seq, blob)

    async def list_usage(self, account_id: str, from_ms: int, to_ms: int, limit: int,
                         after: str | None) -> tuple[list[UsageRow], str | None]:
        check_limit(limit)
        chunks = self._usage.get(account_id, [])
        start = (from_ms, 0)
        if after is not None:
            try:
                at_text, _, n_text = after.partition(":")
                start = max(start, (int(at_text), int(n_text) + 1))
            except ValueError:
                raise InvalidCursor(f"bad cursor {after!r}") from None
        # The first chunk whose last row is at or after `start`; rows are keyed (at_ms, n).
        i = bisect.bisect_left(chunks, start, key=lambda chunk: (chunk[0], chunk[1]))
        out: list[UsageRow] = []
        last = None
        more = False
        while i < len(chunks):
            at_ms, last_n, n_rows, blob = chunks[i]
            if to_ms and at_ms >= to_ms:
                break
            first_n = last_n - n_rows + 1
            for n, payload in enumerate(unpack_payloads(blob, n_rows), first_n):
                if (at_ms, n) < start:
                    continue
                if len(out) == limit:
                    more = True
                    break
                out.append(UsageRow(account_id, at_ms, payload))
                last = (at_ms, n)
            if more:
                break
            i += 1
        return out, (f"{last[0]}:{last[1]}" if more and last else None)

    async def read_events(self, after_event_id: int, limit: int, account_id: str | None = None) -> list[EventRow]:
        check_limit(limit)
        i = bisect.bisect_right(self._events, after_event_id, key=lambda ev: ev.event_id)
        out = []
        for ev in self._events[i:]:
            if account_id is None or ev.account_id == account_id:
                out.append(ev)
                if len(out) == limit:
                    break
        return out

    async def check_durability(self) -> str | None:
        return "storage.url is memory://: nothing is persisted; a restart loses every account"
