"""Admission: which prompts generate, which scored groups wait for training, and the filter.

    admit():     gate open -> next prompt from the sampler -> group number, admit version, deadline
    complete():  scored group -> the algorithm's filter: kept -> buffer; dropped -> slot freed,
                 a line in filtered.jsonl
    take_batch(): B buffered groups, oldest deadline first, staleness-feasible (buffer.py)

The staleness gate (staleness.py) and the buffer (buffer.py) together guarantee that no trained
token is older than eta = `controller.max_staleness` versions.

Filtering and dynamic sampling: each scored group goes through `Algorithm.filter`. A dropped group
never reaches the buffer; it leaves the gate's `running` count (`on_reject`), so the gate admits
another prompt in its place and dropped groups never count toward a batch. Refills are bounded per
step: at most `max_oversample_rounds` extra rounds of B admissions, i.e. at most R·B dropped groups
while the trainer is at one version. Past that bound a group the filter would drop still fills
its place in the batch, marked `Group.filter_bypassed` (counted as `groups_filter_bypassed`): the
batch is always B groups, no step ever waits on a filter, and the staleness accounting is
unchanged. A rejected group is never trained with a nonzero advantage: the trainer gives a marked
group advantage 0 AND loss mask 0 (workers/batch.py), so it leaves the gradient and the loss
denominators, and the step equals training on the batch's kept groups alone (the marked group
costs its forward passes). Advantage 0 with the mask kept would still count its tokens in the
denominators: under `token-mean` it would scale the kept groups' gradient by N_kept/(N_kept +
N_bypassed), a data-dependent shrink of the step (the dilution dynamic sampling exists to avoid),
and with a KL in the loss the group would still get the KL's gradient. Every dropped group is
written to `filtered.jsonl`, so every admitted prompt is either in the staleness audit (trained
or bypassed) or there.

RPO planning (`rpo.enabled`, algorithms/rpo.py): `plan(prompt)` is the prefix of the prompt's
cached response that its group continues (None: a full rollout).

`state_dict()` is the state at one instant of the event loop (no await inside; written as JSON
by controller/checkpoint.py): the sampler's position, the gate's counters, the buffered groups
(scored, untrained) with their deadlines, the in-flight groups (their prompts, admit versions and
deadlines; their partial tokens are not kept: after `load_state_dict` they are generated again
from the prompt, keeping group number, admit version and deadline), the refill budget and the RPO
planner's random state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from areal_sys.algorithms import Algorithm
from areal_sys.algorithms.rpo import PartialPlan, RpoPlanner
from areal_sys.config import ExperimentConfig
from areal_sys.data.sampler import EpochSampler
from areal_sys.metrics import JsonlWriter
from areal_sys.trajectory import Group, Prompt, Trajectory
from controller.buffer import Buffer
from controller.staleness import StalenessManager


@dataclass(frozen=True)
class Admitted:
    """An admitted group: its number, prompt, the policy version it was admitted at, and its
    deadline (the last trainer version allowed to train it)."""

    seq: int
    prompt: Prompt
    admit_version: int
    deadline: int


class Admission:
    def __init__(self, cfg: ExperimentConfig, train: list[Prompt], algo: Algorithm,
                 rpo: RpoPlanner | None, filtered: JsonlWriter) -> None:
        b = cfg.controller.batch_size
        self.sampler = EpochSampler(train, seed=cfg.seed, shuffle=cfg.data.shuffle)
        self.gate = StalenessManager(b, cfg.controller.max_staleness)
        self.buffer = Buffer(b)
        self.algo, self.rpo, self.filtered = algo, rpo, filtered
        self.limit = cfg.rollout.max_concurrent_groups * cfg.rollout.num_workers  # in flight
        self.version = 0
        self.next_seq = 0
        self.inflight: dict[int, Admitted] = {}
        self.refill_budget = algo.max_oversample_rounds * b
        self.refills_left = self.refill_budget  # drops still allowed at this version
        self.counts = {"scored": 0, "filtered": 0, "bypassed": 0}  # since the last step record
        self.filtered_total = 0
        self._restored: list[Admitted] = []  # in flight at the checkpoint: to generate again

    def admit(self) -> list[Admitted]:
        """The groups to start now: those restored from a checkpoint, then new prompts while the
        gate is open and fewer than `limit` groups are in flight. No await: the caller starts
        them before a checkpoint can look."""
        out, self._restored = self._restored, []
        while self.gate.can_admit() and self.gate.running < self.limit:
            seq, self.next_seq = self.next_seq, self.next_seq + 1
            a = Admitted(seq, self.sampler.next(), self.gate.on_admit(), self.gate.deadline())
            self.buffer.on_admit(seq, a.deadline)
            self.inflight[seq] = a
            out.append(a)
        return out

    async def wait_for_change(self) -> None:
        """Until the gate may have opened (a group finished or was dropped, a new version)."""
        await self.gate.wait_for_change()

    def plan(self, prompt: Prompt) -> PartialPlan | None:
        return self.rpo.plan(prompt.uid) if self.rpo is not None else None

    def complete(self, a: Admitted, trajs: list[Trajectory]) -> Group | None:
        """A scored group: buffered and returned, or dropped by the filter (module doc)."""
        group = Group(a.seq, a.prompt.uid, trajs, a.admit_version)
        del self.inflight[a.seq]  # buffered or filtered: from here on, a checkpoint holds it there
        if not self._keep(group):
            return None
        self.buffer.put(a.seq, group)
        self.gate.on_accept()
        return group

    def _keep(self, group: Group) -> bool:
        self.counts["scored"] += 1
        if self.algo.filter(torch.tensor(group.rewards, dtype=torch.float32)):
            return True
        if self.refills_left <= 0:  # the refill bound is reached: in the batch, not the gradient
            self.counts["bypassed"] += 1
            group.filter_bypassed = True
            return True
        self.refills_left -= 1
        self.counts["filtered"] += 1
        self.filtered_total += 1
        self.buffer.drop(group.group_id)
        self.gate.on_reject()
        self.filtered.write({
            "version": self.version, "prompt_uid": group.prompt_uid, "group_id": group.group_id,
            "admit_version": group.admit_version, "rewards": group.rewards,
        })
        return False

    async def take_batch(self) -> list[Group]:
        return await self.buffer.take_batch(self.version)

    def set_version(self, version: int) -> None:
        """The trainer moved to `version`: the gate opens for it and the refill budget renews."""
        self.version = version
        self.refills_left = self.refill_budget
        self.gate.set_version(version)

    def take_counts(self) -> dict[str, int]:
        """Groups scored, filtered and filter-bypassed since the last call."""
        counts, self.counts = self.counts, dict.fromkeys(self.counts, 0)
        return counts

    def state_dict(self) -> dict[str, Any]:
        """The state at this instant (module doc); controller/checkpoint.py writes it as JSON."""
        return {
            "version": self.version,
            "next_seq": self.next_seq,
            "sampler": self.sampler.state_dict(),
            "staleness": self.gate.state_dict(),
            "buffered": self.buffer.completed_groups(),  # (seq, deadline, Group)
            "inflight": [(a.seq, a.prompt, a.admit_version, a.deadline)
                         for _, a in sorted(self.inflight.items())],
            "refills_left": self.refills_left,
            "filtered_total": self.filtered_total,
            "rpo": self.rpo.state_dict() if self.rpo is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The state of `state_dict()`; its in-flight groups are handed out by the next `admit`."""
        self.version = state["version"]
        self.next_seq = state["next_seq"]
        self.sampler.load_state_dict(state["sampler"])
        self.gate.load_state_dict(state["staleness"], running=len(state["inflight"]))
        self.refills_left = state["refills_left"]
        self.filtered_total = state["filtered_total"]
        for seq, deadline, group in state["buffered"]:
            self.buffer.on_admit(seq, deadline)
            self.buffer.put(seq, group)
        for seq, prompt, admit_version, deadline in state["inflight"]:
            self.buffer.on_admit(seq, deadline)
            self.inflight[seq] = Admitted(seq, prompt, admit_version, deadline)
            self._restored.append(self.inflight[seq])
        if self.rpo is not None:  # checkpoints before cache healing saved only the draws' state
            self.rpo.load_state_dict(state.get("rpo") or {"rng": state["rpo_rng"]})
