"""Scoring as a service: graders by task name and an asynchronous, isolated `RewardService`.

Importing this package is light (no Ray, no math-verify): the controller wraps `RewardService`
with `ray.remote`, and grading itself runs in subprocesses.
"""

from reward_service.graders import UnknownTaskError, get_grader, register_grader
from reward_service.service import RewardResult, RewardService

__all__ = ["RewardResult", "RewardService", "UnknownTaskError", "get_grader", "register_grader"]
