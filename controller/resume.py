"""Checkpoint and resume of the whole asynchronous state (the Controller's side).

A checkpoint is taken between steps, right after the weights of version V were pushed: the
trainer ranks (and the critic) write their DeepSpeed state and the HF policy, and the controller
writes a snapshot taken at one instant of its event loop (no await inside `snapshot`):

- version V, the next group number, the prompt sampler's (epoch, position, seed);
- the staleness gate's counters, the buffered groups (scored, untrained) with their deadlines;
- the in-flight groups (admitted, still generating or scoring): their prompts, admit versions and
  deadlines. Their partial tokens are not kept: a resume regenerates them from the prompt under
  the resumed weights, keeping their group number, admit version and deadline;
- the filter's refill budget, the RPO planner's random state (its cache is `rpo_cache.npz`);
- the sizes of the run's JSON-lines files, which a resume truncates back to.

So every prompt the sampler handed out before the checkpoint is, at resume, in exactly one place:
trained (audit), filtered (filtered.jsonl), buffered or in flight; prompts after it come from the
restored sampler in the same order. Nothing is trained twice and versions continue at V.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller import checkpoint

if TYPE_CHECKING:
    from controller.controller import Controller

# Fault injection for the crash tests: seconds to wait between writing a checkpoint's files and
# committing it, so that a test can kill the run while the checkpoint is incomplete.
FAULT_PAUSE_ENV = "AREAL_SYS_FAULT_CHECKPOINT_PAUSE_S"
RUN_FILES = ("metrics.jsonl", "staleness.jsonl", "filtered.jsonl", "timeline.jsonl",
             "eval.jsonl")


class Checkpointing:
    """Mixin of `Controller`: `save_checkpoint()` and `restore()`."""

    def snapshot(self: Controller) -> dict[str, Any]:
        """The controller's state at this instant (module doc)."""
        return {
            "version": self.version,
            "next_seq": self._next_seq,
            "sampler": self.sampler.state_dict(),
            "staleness": self.staleness.state_dict(),
            "buffered": self.buffer.completed_groups(),
            "inflight": [(seq, *entry) for seq, entry in sorted(self._inflight.items())],
            "refills_left": self._refills_left,
            "filtered_total": self.filtered_total,
            "rpo_rng": self.rpo.rng.getstate() if self.rpo is not None else None,
            "files": checkpoint.file_sizes([self.run_dir / name for name in RUN_FILES]),
        }

    async def save_checkpoint(self: Controller) -> Path:
        """`checkpoints/step_V/`, written atomically; older ones beyond `keep_last` removed."""
        state = self.snapshot()
        tmp = checkpoint.begin(self.run_dir, self.version)
        saves = [t.save_checkpoint.remote(str(tmp)) for t in self.actors.trainers]
        if self.actors.critic is not None:
            saves.append(self.actors.critic.save_checkpoint.remote(str(tmp)))
        if self.rpo is not None:
            self.rpo.cache.save(tmp / "rpo_cache.npz")
        await self.call_trainers(asyncio.gather(*saves))
        if pause := float(os.environ.get(FAULT_PAUSE_ENV, "0")):  # fault injection (tests)
            await asyncio.sleep(pause)
        final = checkpoint.commit(tmp, state)
        checkpoint.prune(self.run_dir, self.cfg.trainer.keep_last)
        return final

    async def restore(self: Controller) -> int:
        """Load the checkpoint given at construction; returns its version (the next step)."""
        assert self._resume is not None and self._resume_state is not None
        ckpt, state = self._resume, self._resume_state
        loads = [t.load_checkpoint.remote(str(ckpt)) for t in self.actors.trainers]
        if self.actors.critic is not None:
            loads.append(self.actors.critic.load_checkpoint.remote(str(ckpt)))
        await asyncio.gather(*loads)
        await self._push_weights(state["version"])  # the engines serve version V
        self.sampler.load_state_dict(state["sampler"])
        self.staleness.load_state_dict(state["staleness"], running=len(state["inflight"]))
        self._next_seq = state["next_seq"]
        self._refills_left = state["refills_left"]
        self.filtered_total = state["filtered_total"]
        for seq, deadline, group in state["buffered"]:
            self.buffer.on_admit(seq, deadline)
            self.buffer.put(seq, group)
        for seq, prompt, admit_version, deadline in state["inflight"]:
            self._start(seq, prompt, admit_version, deadline)
        if self.rpo is not None:
            from areal_sys.algorithms.rpo import ExperienceCache

            self.rpo.cache = ExperienceCache.load(ckpt / "rpo_cache.npz")
            self.rpo.rng.setstate(state["rpo_rng"])
        print(f"resumed from {ckpt} (version {state['version']}: {len(state['buffered'])} "
              f"buffered and {len(state['inflight'])} in-flight groups)", flush=True)
        return int(state["version"])

    def _pass_rate_before(self: Controller) -> float | None:
        """The 'before' pass rate of the first attempt of a resumed run (eval.jsonl)."""
        from areal_sys.metrics import read_jsonl

        path = self.run_dir / "eval.jsonl"
        rows = [r for r in read_jsonl(path) if r.get("tag") == "before"] if path.exists() else []
        return rows[0]["pass_rate"] if rows else None
