"""Where a run's start-up time goes: seconds from the command's start to each phase's end.

`launch.run` marks the phases as they end (validated, ray, placed, engines, trainers,
weight_group, first_step); the figures go into results.json under `startup` and, once the actors
are up, into one console line. The engines and the trainer ranks start in parallel, so their
marks are when each role was ready, not how long each took alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Startup:
    t0: float = field(default_factory=lambda: time.time())
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, phase: str) -> None:
        """Phase `phase` ended now (the first mark of a name counts)."""
        self.marks.setdefault(phase, round(time.time() - self.t0, 3))

    def line(self) -> str:
        """'started in 27.4 s: validated 3.1 s, ray 6.2 s, ...' (seconds since the command)."""
        last = max(self.marks.values(), default=0.0)
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.marks.items())
        return f"started in {last:.1f} s (ready at, from the command's start: {parts})"
