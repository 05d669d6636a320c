"""Scoring as a service: graders by task name and an asynchronous, isolated `RewardService`.

Two faces over that one core: the controller wraps `RewardService` with `ray.remote` (default),
and `reward_service.http` serves it over HTTP (`areal-sys reward-serve`), which the controller
reaches through `reward_service.client.HttpRewardClient` when `reward.url` is set. Code is run by
`reward_service.sandbox`. Importing this package is light (no Ray, no math-verify, no FastAPI):
grading itself runs in subprocesses.
"""

from reward_service.graders import UnknownTaskError, get_grader, register_grader
from reward_service.service import RewardResult, RewardService

__all__ = ["RewardResult", "RewardService", "UnknownTaskError", "get_grader", "register_grader"]
