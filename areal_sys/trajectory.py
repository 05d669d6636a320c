"""The episode contract: a training prompt (Prompt), one sampled response (Trajectory) and the n
responses of a prompt (Group).

Everything downstream of a rollout worker (reward service, buffer, filters, advantage estimators,
packing, trainer, staleness audit) relies on exactly these fields. Per-token lists all have the
length of `response_ids`. A prompt's task data (`task`, `reference`) stays with its Prompt in the
controller, which scores the prompt's responses with it: nothing that the engine and the trainer do
not use travels to them.

Checkpoints store these objects as JSON through `to_dict` / `from_dict` (plain field names, no
class paths), so renaming a class or module never breaks a saved run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Prompt:
    """A training or held-out prompt: its token ids, and the task data its responses are graded
    with (the grader's name and the reference answer)."""

    uid: str
    ids: list[int]
    reference: str
    task: str
    text: str = ""  # the prompt as the dataset gave it (before any template)

    def to_dict(self) -> dict[str, Any]:
        return {"uid": self.uid, "ids": list(self.ids), "reference": self.reference,
                "task": self.task, "text": self.text}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Prompt:
        return cls(str(d["uid"]), [int(i) for i in d["ids"]], str(d["reference"]), str(d["task"]),
                   str(d.get("text", "")))


@dataclass
class Trajectory:
    """One sampled response to one prompt.

    `behav_logprobs` are the engine's log-probabilities of the sampled tokens, recorded at sampling
    time and never recomputed. `versions[t]` is the policy version (number of completed optimiser
    updates) of the weights that produced response token t.
    """

    prompt_uid: str
    group_id: int
    prompt_ids: list[int]
    response_ids: list[int]
    behav_logprobs: list[float]
    versions: list[int]
    loss_mask: list[int]
    finish_reason: str = "stop"  # stop | length | abort; interruptions: see num_interrupts
    reward: float = 0.0
    reward_ok: bool = True
    reward_reason: str = ""
    prefix_len: int = 0  # RPO: leading response tokens taken from the experience cache
    num_interrupts: int = 0
    response_text: str = ""
    submit_time: float = 0.0  # wall-clock seconds (time.time())
    finish_time: float = 0.0
    worker_id: int = 0
    # tool_use episodes (areal_sys/episode.py): model turns, tool calls, failed calls, seconds in
    # tools; result tokens are the response tokens with loss mask 0 past `prefix_len`
    turns: int = 1
    tool_calls: int = 0
    tool_errors: int = 0
    tool_s: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.response_ids)
        if not (len(self.behav_logprobs) == len(self.versions) == len(self.loss_mask) == n):
            raise ValueError(
                f"trajectory {self.prompt_uid}/{self.group_id}: per-token fields must all have "
                f"{n} entries (logprobs {len(self.behav_logprobs)}, versions {len(self.versions)}, "
                f"mask {len(self.loss_mask)})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"trajectory: unknown fields {sorted(unknown)}")
        return cls(**d)

    @property
    def length(self) -> int:
        """Total tokens (prompt + response): what the trainer processes."""
        return len(self.prompt_ids) + len(self.response_ids)

    @property
    def tool_tokens(self) -> int:
        """Response tokens a tool wrote (tool_use episodes: loss mask 0 past the RPO prefix)."""
        return self.loss_mask[self.prefix_len:].count(0) if self.tool_calls else 0

    @property
    def generated_versions(self) -> list[int]:
        """Versions of the tokens generated in this rollout (excludes an RPO cached prefix)."""
        return self.versions[self.prefix_len :]

    @property
    def min_version(self) -> int:
        gen = self.generated_versions
        return min(gen) if gen else -1

    @property
    def max_version(self) -> int:
        gen = self.generated_versions
        return max(gen) if gen else -1


@dataclass
class Group:
    """The n trajectories sampled for one prompt; the unit of admission, scoring and buffering.

    `filter_bypassed`: the algorithm's filter rejected the group, but the step's refill budget was
    spent, so it fills a place in the batch anyway (controller/admission.py). The trainer gives it
    advantage 0 and loss mask 0 (workers/batch.py): it is in the batch, never in the gradient.
    """

    group_id: int
    prompt_uid: str
    trajectories: list[Trajectory] = field(default_factory=list)
    admit_version: int = 0
    filter_bypassed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"group_id": self.group_id, "prompt_uid": self.prompt_uid,
                "admit_version": self.admit_version, "filter_bypassed": self.filter_bypassed,
                "trajectories": [t.to_dict() for t in self.trajectories]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Group:
        """The inverse of `to_dict`; a checkpoint written before `filter_bypassed` existed reads
        as not bypassed."""
        return cls(int(d["group_id"]), str(d["prompt_uid"]),
                   [Trajectory.from_dict(t) for t in d["trajectories"]], int(d["admit_version"]),
                   bool(d.get("filter_bypassed", False)))

    @property
    def rewards(self) -> list[float]:
        return [t.reward for t in self.trajectories]

    @property
    def min_version(self) -> int:
        return min(t.min_version for t in self.trajectories)

    @property
    def num_tokens_generated(self) -> int:
        """Tokens the engine sampled: the responses without RPO prefixes and tool results."""
        return sum(len(t.response_ids) - t.prefix_len - t.tool_tokens for t in self.trajectories)
