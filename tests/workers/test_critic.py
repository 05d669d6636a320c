"""CriticWorker with a real DeepSpeed engine (gloo, one rank, in-process) on a random tiny model:
GAE advantages come back nested like the groups and whitened, and value updates fit the returns.
"""

from __future__ import annotations

import pytest
import torch

from areal_sys.ports import free_port
from tests.workers.test_trainer import experiment, make_groups

pytestmark = pytest.mark.slow


def test_critic_advantages_and_value_updates(tmp_path) -> None:
    from areal_sys.models.tiny import save_random_tiny_model
    from workers.critic import CriticWorker

    path = save_random_tiny_model(tmp_path / "model", seed=0)
    cfg = experiment({"critic_lr": 1e-3, "max_tokens_per_microbatch": 128}, {"name": "ppo"})
    critic = CriticWorker(str(path), cfg, master_port=free_port())
    critic.setup()
    try:
        groups = make_groups(3, 4, seed=5)
        adv = critic.prepare(groups)
        assert [[len(a) for a in g] for g in adv] == [
            [len(t.response_ids) for t in g.trajectories] for g in groups]
        flat = torch.tensor([x for g in adv for a in g for x in a])
        assert abs(float(flat.mean())) < 1e-4 and float(flat.std()) == pytest.approx(1, abs=0.05)
        first = critic.update(step=0)
        # zero-initialised value head: V = 0, returns = the outcome reward (gamma = lambda = 1)
        assert first["value_mean"] == 0.0 and first["critic_grad_norm"] > 0
        losses = [first["value_loss"]]
        for step in range(1, 6):
            critic.prepare(groups)
            losses.append(critic.update(step=step)["value_loss"])
        assert losses[-1] < 0.5 * losses[0]
    finally:
        critic.shutdown()
