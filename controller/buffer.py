"""Completed groups, consumed oldest first, each exactly once, never older than eta versions.

Each admitted group carries a deadline d = admit_version + eta: the last trainer version allowed
to train it. A batch for trainer version s takes the B completed groups with the earliest
deadlines (ties: admission order), and only if the groups left behind can still all meet their
deadlines at B groups per step:

    for every t >= s:  #{untrained groups left, d <= t} <= (t - s) * B

(an earliest-deadline-first feasibility check over completed and in-flight groups). Otherwise the
step waits for the in-flight groups that are due. The admission gate guarantees that at most
(t + 1) * B groups ever get a deadline <= t, so a feasible batch always exists once those groups
finish; hence every trained group satisfies s - admit_version <= eta. With eta = 0 the batch is
exactly the B groups admitted at version s: synchronous RL.
"""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass

from areal_sys.trajectory import Group


@dataclass
class _Entry:
    seq: int
    deadline: int
    group: Group | None = None


class Buffer:
    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self._entries: dict[int, _Entry] = {}
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        """Completed, untrained groups."""
        return sum(e.group is not None for e in self._entries.values())

    @property
    def in_flight(self) -> int:
        return sum(e.group is None for e in self._entries.values())

    def on_admit(self, seq: int, deadline: int) -> None:
        if seq in self._entries:
            raise ValueError(f"group {seq} admitted twice")
        self._entries[seq] = _Entry(seq, deadline)

    def put(self, seq: int, group: Group) -> None:
        entry = self._entries[seq]
        if entry.group is not None:
            raise ValueError(f"group {seq} completed twice")
        entry.group = group
        self._changed.set()

    def drop(self, seq: int) -> None:
        """Forget a group that will not train (filtered or abandoned)."""
        del self._entries[seq]
        self._changed.set()

    def ready_batch(self, version: int) -> list[Group] | None:
        """The batch for trainer `version`, removed from the buffer, or None if it must wait."""
        done = sorted(
            (e for e in self._entries.values() if e.group is not None),
            key=lambda e: (e.deadline, e.seq),
        )
        if len(done) < self.batch_size:
            return None
        batch = done[: self.batch_size]
        chosen = {e.seq for e in batch}
        left = sorted(e.deadline for e in self._entries.values() if e.seq not in chosen)
        if left and left[0] < version:
            raise RuntimeError(f"staleness bound broken: a group with deadline {left[0]} "
                               f"is still untrained at version {version}")
        # Feasibility: checking each distinct deadline t is enough (counts only change there).
        for t in sorted(set(left)):
            if bisect.bisect_right(left, t) > (t - version) * self.batch_size:
                return None
        for e in batch:
            del self._entries[e.seq]
        return [e.group for e in batch]  # type: ignore[misc]

    async def take_batch(self, version: int) -> list[Group]:
        while True:
            batch = self.ready_batch(version)
            if batch is not None:
                return batch
            self._changed.clear()
            await self._changed.wait()

    def completed_groups(self) -> list[tuple[int, int, Group]]:
        """(seq, deadline, group) of buffered groups, for checkpoints."""
        return [(e.seq, e.deadline, e.group) for e in self._entries.values() if e.group]
