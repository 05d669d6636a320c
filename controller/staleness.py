"""Admission control and policy-version accounting (the AReaL staleness gate).

With B the train batch in groups, i the current policy version and eta = `max_staleness`, a new
group is admitted only while

    accepted + running + 1 <= (i + eta + 1) * B

where `accepted` counts groups that finished (buffered or already trained) and `running` the groups
being generated or scored. Groups that a filter rejects leave `accepted`, so they free their slot.
eta = 0 admits exactly one batch per version: fully synchronous RL through the same code path.

Every admitted group gets a deadline `admit_version + eta`: the last trainer version allowed to
consume it. `controller/buffer.py` uses the deadlines to pick batches so that no trained token is
older than eta versions (see `Buffer.take_batch`).
"""

from __future__ import annotations

import asyncio


class StalenessManager:
    """Lock-free (single event loop) counters plus a condition the admission loop waits on."""

    def __init__(self, batch_size: int, max_staleness: int, version: int = 0) -> None:
        if batch_size < 1 or max_staleness < 0:
            raise ValueError("batch_size must be >= 1 and max_staleness >= 0")
        self.batch_size = batch_size
        self.max_staleness = max_staleness
        self.version = version
        self.accepted = 0
        self.running = 0
        self.rejected = 0
        self.admitted_total = 0
        self._changed = asyncio.Event()

    @property
    def capacity(self) -> int:
        """Most groups that may ever have been admitted (net of rejections) at this version."""
        return (self.version + self.max_staleness + 1) * self.batch_size

    def can_admit(self) -> bool:
        return self.accepted + self.running + 1 <= self.capacity

    def deadline(self) -> int:
        """Last trainer version that may train a group admitted now."""
        return self.version + self.max_staleness

    def on_admit(self) -> int:
        """Record an admission; returns the group's admit version."""
        if not self.can_admit():
            raise RuntimeError("admission gate is closed")
        self.running += 1
        self.admitted_total += 1
        return self.version

    def on_accept(self) -> None:
        """A running group finished and was buffered."""
        self.running -= 1
        self.accepted += 1
        self._notify()

    def on_reject(self) -> None:
        """A running group will never train (the filter dropped it): its slot is freed."""
        self.running -= 1
        self.rejected += 1
        self._notify()

    def set_version(self, version: int) -> None:
        self.version = version
        self._notify()

    async def wait_for_change(self) -> None:
        await self._changed.wait()
        self._changed.clear()

    def _notify(self) -> None:
        self._changed.set()

    def load_state_dict(self, state: dict[str, int], running: int) -> None:
        """Counters from `state_dict()`; `running` groups are being generated again."""
        self.version = state["version"]
        self.accepted, self.rejected = state["accepted"], state["rejected"]
        self.admitted_total = state["admitted_total"]
        self.running = running
        self._notify()

    def state_dict(self) -> dict[str, int]:
        return {
            "version": self.version,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "admitted_total": self.admitted_total,
        }
