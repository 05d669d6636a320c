"""The `reward` section: what the reward service (Ray actor or `areal-sys reward-serve`) runs."""

from __future__ import annotations

from pydantic import Field

from areal_sys.config.base import Section

# Graders every reward service has (reward_service/graders.py registers exactly these).
BUILTIN_GRADERS: tuple[str, ...] = ("synthetic", "math", "code", "format")


class RewardConfig(Section):
    num_workers: int = Field(1, ge=1, description="reward actors")
    timeout_s: float = Field(5.0, gt=0, description="per-sample grading time limit")
    max_concurrency: int = Field(8, ge=1, description="samples graded at once per actor")
    correct_reward: float = 1.0
    wrong_reward: float = 0.0
    url: str | None = Field(None, description="remote reward service (HTTP); default: Ray actors")
    graders: dict[str, str] = Field(
        default_factory=dict,
        description="plugin graders registered at start: NAME -> 'package.module:function'; "
        "tasks (data.task, a row's task, an HTTP item's task) name a built-in or one of these",
    )

    def grader_names(self) -> list[str]:
        """Every task name this service grades: the built-ins and the registered plugins."""
        return sorted({*BUILTIN_GRADERS, *self.graders})
