"""Placement groups per role: the bundles a config asks for, the fail-fast check against the
cluster, and (with a real local Ray instance) the timeout when resources are held elsewhere."""

import time
from pathlib import Path

import pytest

from areal_sys.config import ConfigError, load_config
from controller.placement import Placement, check_fits, check_nodes, role_bundles

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_recipe_separates_rollout_and_trainer_gpus() -> None:
    cfg = load_config(ROOT / "configs" / "gsm8k" / "grpo.yaml")
    bundles = role_bundles(cfg)
    assert bundles["rollout"] == [{"CPU": 4.0, "GPU": 1.0}] * cfg.rollout.num_workers
    assert bundles["trainer"] == [{"CPU": 4.0, "GPU": 1.0}] * cfg.trainer.num_workers
    assert bundles["critic"] == [] and bundles["reward"] == []  # reward_cpus 0: no group


def test_zero_resource_roles_reserve_nothing() -> None:
    cfg = load_config(None, ["rollout.num_workers=2", "trainer.num_workers=3",
                             "cluster.reward_cpus=0.5", "cluster.critic_cpus=1"])
    bundles = role_bundles(cfg, needs_critic=True)
    assert bundles["rollout"] == [{"CPU": 1.0}] * 2
    assert bundles["trainer"] == [{"CPU": 1.0}] * 3
    assert bundles["critic"] == [{"CPU": 1.0}] and bundles["reward"] == [{"CPU": 0.5}]
    assert role_bundles(cfg)["critic"] == []
    remote = load_config(None, ["reward.url=http://127.0.0.1:8700", "cluster.reward_cpus=1"])
    assert role_bundles(remote)["reward"] == []


def test_check_fits_names_the_shortfall() -> None:
    cfg = load_config(ROOT / "configs" / "gsm8k" / "grpo.yaml")
    bundles = role_bundles(cfg)
    node = {"CPU": 16.0, "GPU": 2.0}
    check_fits(bundles, node, [node])  # exactly enough
    with pytest.raises(ConfigError) as err:
        check_fits(bundles, {"CPU": 16.0}, [{"CPU": 16.0}])
    msg = str(err.value)
    assert "\n" not in msg and "GPU 2" in msg and "GPU 0" in msg and "rollout 1 x" in msg
    # enough in sum but no node can hold one trainer rank
    nodes = [{"CPU": 2.0, "GPU": 1.0}] * 4
    with pytest.raises(ConfigError, match="no single node"):
        check_fits(bundles, {"CPU": 8.0, "GPU": 4.0}, nodes)


def test_custom_resources_join_the_bundles_and_the_messages() -> None:
    cfg = load_config(None, ["rollout.num_workers=2", "trainer.num_workers=2",
                             "cluster.rollout_resources={rollout_node: 1}",
                             "cluster.trainer_resources={trainer_node: 0.5}"])
    bundles = role_bundles(cfg)
    assert bundles["rollout"] == [{"CPU": 1.0, "rollout_node": 1.0}] * 2
    assert bundles["trainer"] == [{"CPU": 1.0, "trainer_node": 0.5}] * 2
    a = {"CPU": 2.0, "trainer_node": 1.0, "memory": 1e9, "node:10.0.0.1": 1.0}
    b = {"CPU": 2.0, "rollout_node": 1.0}
    c = {"CPU": 2.0, "rollout_node": 1.0}
    total = {"CPU": 6.0, "trainer_node": 1.0, "rollout_node": 2.0}
    check_fits(bundles, total, [a, b, c])
    with pytest.raises(ConfigError) as err:  # the rollout resource is on one node only
        check_fits(bundles, {**total, "rollout_node": 1.0}, [a, b])
    assert "rollout_node 2" in str(err.value) and "rollout_node 1" in str(err.value)
    # the trainer ranks share one node: 2 x 0.5 of trainer_node on a node that has 1, but only
    # 1 CPU there for their 2
    with pytest.raises(ConfigError, match=r"trainer ranks need CPU 2, trainer_node 1 on one node"):
        check_fits(bundles, total, [{**a, "CPU": 1.0}, b, {**c, "CPU": 3.0}])


def test_shm_file_needs_every_engine_on_the_trainers_node() -> None:
    nodes = {"trainer": ["n0", "n0"], "rollout": ["n0", "n1"]}
    collective = load_config(None, ["trainer.weight_sync=collective"])
    check_nodes(collective, nodes)
    shm = load_config(None, ["trainer.weight_sync=shm_file"])
    with pytest.raises(ConfigError, match="rollout worker 1 is on node n1 and trainer rank 0 on "
                                          "node n0.*use trainer.weight_sync=collective"):
        check_nodes(shm, nodes)
    check_nodes(shm, {"trainer": ["n0"], "rollout": ["n0", "n0"]})
    check_nodes(shm, {"rollout": ["n1"]})  # no trainer group (nothing reserved): unknown


def test_placement_is_described_only_across_nodes() -> None:
    one = Placement(nodes={"trainer": ["n0"], "rollout": ["n0", "n0"]})
    assert one.spread() is None
    many = Placement(nodes={"trainer": ["n0"], "rollout": ["n1", "n2"], "reward": ["n0"]},
                     names={"n0": "10.0.0.1 (n0)", "n1": "10.0.0.2 (n1)"})
    assert many.spread() == {"trainer": ["10.0.0.1 (n0)"], "rollout": ["10.0.0.2 (n1)", "n2"],
                             "reward": ["10.0.0.1 (n0)"]}


@pytest.mark.slow
def test_reserve_times_out_when_resources_are_held(tmp_path: Path) -> None:
    import ray
    from ray.util.placement_group import placement_group

    from controller.placement import reserve

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        holder = placement_group([{"CPU": 1.0}])  # another job holding one of the two CPUs
        ray.get(holder.ready(), timeout=60)
        cfg = load_config(None, ["cluster.placement_timeout_s=2"])  # needs 2 CPUs: fits in sum
        with pytest.raises(ConfigError, match="could not reserve") as err:
            reserve(cfg)
        assert "\n" not in str(err.value)
        deadline = time.time() + 30  # removal is asynchronous: nothing stays reserved
        while ray.available_resources().get("CPU", 0.0) != 1.0 and time.time() < deadline:
            time.sleep(0.2)
        assert ray.available_resources().get("CPU", 0.0) == 1.0
        cfg = load_config(None, ["cluster.rollout_cpus=0.5", "cluster.trainer_cpus=0.5"])
        placement = reserve(cfg)
        assert set(placement.groups) == {"rollout", "trainer"}
        placement.release()
    finally:
        ray.shutdown()


def test_eight_gpu_recipe_needs_eight_gpus_in_two_groups() -> None:
    cfg = load_config(ROOT / "configs" / "gsm8k" / "grpo_8gpu.yaml")
    bundles = role_bundles(cfg)
    assert bundles["rollout"] == [{"CPU": 8.0, "GPU": 1.0}] * 4
    assert bundles["trainer"] == [{"CPU": 8.0, "GPU": 1.0}] * 4
    assert cfg.controller.max_staleness == 4 and cfg.trainer.weight_sync == "collective"
    node = {"CPU": 96.0, "GPU": 8.0}
    check_fits(bundles, node, [node])
    with pytest.raises(ConfigError, match="needs CPU 68, GPU 8"):
        check_fits(bundles, {"CPU": 96.0, "GPU": 4.0}, [{"CPU": 96.0, "GPU": 4.0}])
