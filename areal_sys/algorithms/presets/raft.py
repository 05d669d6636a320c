"""RAFT, Reward rAnked FineTuning: Dong et al., "RAFT: Reward rAnked FineTuning for Generative
Foundation Model Alignment", arXiv:2304.06767 (2023).

Rejection sampling then supervised fine-tuning: response i of a group gets weight w_i = 1 when
its reward is the group's maximum and a success (reward >= `success_threshold`), else 0
(estimator `raft`); the loss is −w_i·logπ_θ per token (loss `raft_sft`), token-mean over the
kept responses only (weight-0 responses leave the loss and its denominators). A group with no
correct response trains nothing, so the filter `remove_all_wrong` drops it before buffering and
the controller counts the drop. The weights depend only on which responses are correct, so the
method needs no particular reward values.
"""

from areal_sys.algorithms.presets.base import NO_KL, NO_OVERLONG, Preset

PRESET = Preset(
    name="raft",
    description="RAFT: SFT on each group's best correct responses; all-wrong groups are dropped",
    estimator="raft", loss="raft_sft", aggregation="token-mean", filter="remove_all_wrong",
    settings={**NO_KL, **NO_OVERLONG},
)
