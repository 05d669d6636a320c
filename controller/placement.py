"""Reserve the run's resources on the Ray cluster with one placement group per role.

The `cluster` section declares what each actor needs; the counts come from the role sections:

    rollout: rollout.num_workers bundles of {CPU: cluster.rollout_cpus, GPU: cluster.rollout_gpus,
             **cluster.rollout_resources}
    trainer: trainer.num_workers bundles of {CPU: cluster.trainer_cpus, GPU: cluster.trainer_gpus,
             **cluster.trainer_resources}
    critic:  one {CPU: cluster.critic_cpus, GPU: cluster.critic_gpus} bundle (PPO's value model)
    reward:  one {CPU: cluster.reward_cpus} bundle (the reward service actor)

Rollout and trainer get separate placement groups, so on a GPU cluster the engines and the
trainer ranks hold separate GPUs. A role whose actors need no resources (all zero) gets no group.
Before waiting, `reserve` compares the demand with `ray.cluster_resources()` (the sum, and each
bundle against the largest node) and fails at once when it can never fit; otherwise it waits at
most `cluster.placement_timeout_s` for the groups (resources held by other jobs). Both failures
are a `ConfigError`: one line, exit code 2.

Once reserved, `Placement.nodes` says on which node each bundle (actor i of a role) landed (Ray's
placement-group table); a run over several nodes writes it to events.jsonl (`placement`). The
trainer ranks share one node (their process group meets on 127.0.0.1): their group is always
STRICT_PACK, and `cluster.placement_strategy` applies to the other roles. The `shm_file` weight
sync needs every rollout engine on the trainer's node too (the file lives in its /dev/shm):
`check_nodes` refuses anything else with one line (and releases the groups).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from areal_sys.config import ConfigError, ExperimentConfig

Bundle = dict[str, float]
ROLES = ("rollout", "trainer", "critic", "reward")


def _bundle(cpus: float, gpus: float, extra: dict[str, float] | None = None) -> Bundle:
    return {k: v for k, v in (("CPU", cpus), ("GPU", gpus), *(extra or {}).items()) if v > 0}


def role_bundles(cfg: ExperimentConfig, needs_critic: bool = False) -> dict[str, list[Bundle]]:
    """Bundles per role (empty list: the role reserves nothing). Pure: no Ray."""
    c = cfg.cluster
    out = {
        "rollout": [_bundle(c.rollout_cpus, c.rollout_gpus, c.rollout_resources)]
        * cfg.rollout.num_workers,
        "trainer": [_bundle(c.trainer_cpus, c.trainer_gpus, c.trainer_resources)]
        * cfg.trainer.num_workers,
        "critic": [_bundle(c.critic_cpus, c.critic_gpus)] if needs_critic else [],
        "reward": [] if cfg.reward.url else [_bundle(c.reward_cpus, 0.0)],
    }
    # Ray refuses an empty bundle: an actor that asks for nothing is scheduled without a group
    return {role: bundles if all(bundles) else [] for role, bundles in out.items()}


def _fmt(resources: dict[str, float], only: Any = None) -> str:
    """'CPU 2, GPU 1, accel 1': CPU and GPU, then custom resources (of `only`, when given: a
    cluster's totals hold many a run never asks for)."""
    custom = sorted(k for k in (only if only is not None else resources)
                    if k not in ("CPU", "GPU") and k in resources and _custom(k))
    shown = [f"{k} {resources[k]:g}" for k in ("CPU", "GPU", *custom) if k in resources]
    return ", ".join(shown) or "nothing"


def _custom(name: str) -> bool:
    """A resource a user declares (not Ray's memory or per-node `node:IP` markers)."""
    return name not in ("memory", "object_store_memory") and not name.startswith("node:")


def _demand(bundles: dict[str, list[Bundle]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for role_bundles_ in bundles.values():
        for b in role_bundles_:
            for k, v in b.items():
                total[k] = total.get(k, 0.0) + v
    return total


def _fits(demand: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(k, 0.0) + 1e-9 >= v for k, v in demand.items())


def _describe(bundles: dict[str, list[Bundle]]) -> str:
    parts = [f"{role} {len(b)} x {{{_fmt(b[0])}}}" for role, b in bundles.items() if b]
    return "; ".join(parts)


def check_fits(bundles: dict[str, list[Bundle]], cluster_total: dict[str, float],
               node_totals: list[dict[str, float]]) -> None:
    """Raise ConfigError when the demand can never be placed on this cluster. Pure: no Ray."""
    need = _demand(bundles)
    short = {k: v for k, v in need.items() if v > cluster_total.get(k, 0.0) + 1e-9}
    if short:
        have = {k: cluster_total.get(k, 0.0) for k in need}
        raise ConfigError(
            f"cluster: the run needs {_fmt(need)} ({_describe(bundles)}) but the Ray cluster has "
            f"{_fmt(have)} in all; lower rollout/trainer num_workers or cluster.*_cpus/*_gpus/"
            "*_resources, or add nodes"
        )
    for role, role_bundles_ in bundles.items():
        for b in role_bundles_[:1]:  # bundles of a role are identical
            if not any(_fits(b, node) for node in node_totals):
                raise ConfigError(
                    f"cluster: no single node has {{{_fmt(b)}}} for one {role} actor "
                    f"(largest nodes: {'; '.join(_fmt(n, b) for n in node_totals[:3])})"
                )
    trainer = _demand({"trainer": bundles.get("trainer", [])})
    if trainer and not any(_fits(trainer, node) for node in node_totals):
        raise ConfigError(
            f"cluster: the trainer ranks need {_fmt(trainer)} on one node (they share it), but no "
            f"node has it (largest nodes: {'; '.join(_fmt(n, trainer) for n in node_totals[:3])})")


@dataclass
class Placement:
    """The run's placement groups by role; `strategy(role, i)` pins actor i of a role."""

    groups: dict[str, Any] = field(default_factory=dict)
    nodes: dict[str, list[str]] = field(default_factory=dict)  # role -> node id per bundle
    names: dict[str, str] = field(default_factory=dict)  # node id -> 'IP (id prefix)'

    def spread(self) -> dict[str, list[str]] | None:
        """{role: node name per actor} when the run's bundles span several nodes, else None."""
        if len({n for ids in self.nodes.values() for n in ids}) < 2:
            return None
        return {role: [self.names.get(n, n[:8]) for n in ids] for role, ids in self.nodes.items()}

    def strategy(self, role: str, index: int = 0) -> Any:
        """A scheduling strategy for actor `index` of `role`, or None (no group for the role)."""
        pg = self.groups.get(role)
        if pg is None:
            return None
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(placement_group=pg,
                                                placement_group_bundle_index=index)

    def release(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for pg in self.groups.values():
            try:
                remove_placement_group(pg)
            except Exception:  # noqa: BLE001 - best effort: the cluster may be gone
                pass
        self.groups.clear()


def _node_totals() -> list[dict[str, float]]:
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return sorted(nodes, key=lambda r: (r.get("GPU", 0.0), r.get("CPU", 0.0)), reverse=True)


def reserve(cfg: ExperimentConfig, needs_critic: bool = False) -> Placement:
    """Check the demand against the cluster, create one group per role and wait for all of them
    (at most `cluster.placement_timeout_s`). On failure nothing stays reserved."""
    import ray
    from ray.util.placement_group import placement_group

    bundles = role_bundles(cfg, needs_critic)
    check_fits(bundles, ray.cluster_resources(), _node_totals())
    placement = Placement()
    for role in ROLES:
        if bundles[role]:
            strategy = "STRICT_PACK" if role == "trainer" else cfg.cluster.placement_strategy
            placement.groups[role] = placement_group(bundles[role], strategy=strategy, name="")
    timeout = cfg.cluster.placement_timeout_s
    try:
        ready = ray.get([pg.ready() for pg in placement.groups.values()], timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        ready = None
    if ready is None:
        placement.release()
        free = _fmt(ray.available_resources())
        raise ConfigError(
            f"cluster: could not reserve {_describe(bundles)} within cluster.placement_timeout_s="
            f"{timeout:g} s (free now: {free}); other jobs may hold the resources"
        )
    print(f"cluster: reserved {_describe(bundles) or 'nothing'} "
          f"({cfg.cluster.placement_strategy})", flush=True)
    from ray.util import placement_group_table

    for role, pg in placement.groups.items():
        where = placement_group_table(pg).get("bundles_to_node_id", {})
        placement.nodes[role] = [str(where.get(i, "")) for i in range(len(bundles[role]))]
    placement.names = node_names()
    try:
        check_nodes(cfg, placement.nodes)
    except ConfigError:
        placement.release()
        raise
    return placement


def check_nodes(cfg: ExperimentConfig, nodes: dict[str, list[str]]) -> None:
    """For `shm_file`, every rollout engine must have landed on trainer rank 0's node. Pure."""
    trainer0 = (nodes.get("trainer") or [""])[0]
    if cfg.trainer.weight_sync != "shm_file" or not trainer0:
        return
    for i, node in enumerate(nodes.get("rollout", [])):
        if node and node != trainer0:
            raise ConfigError(
                f"trainer.weight_sync=shm_file: rollout worker {i} is on node {node[:8]} and "
                f"trainer rank 0 on node {trainer0[:8]}, but the weight file lives in one node's "
                "/dev/shm; use trainer.weight_sync=collective (gloo/NCCL across nodes) or place "
                "them together (cluster.placement_strategy, *_resources)")


def node_names() -> dict[str, str]:
    """Node id -> 'IP (id prefix)' of the live nodes."""
    import ray

    return {n["NodeID"]: f"{n.get('NodeManagerAddress', '?')} ({n['NodeID'][:8]})"
            for n in ray.nodes() if n.get("Alive")}
