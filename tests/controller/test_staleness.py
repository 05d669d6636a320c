"""The admission gate (AReaL inequality) and the deadline-feasible, oldest-first buffer: each on
its own, then together inside the real controller (the filter's part of the protocol:
tests/controller/test_controller.py)."""

import asyncio
from collections import Counter

import pytest

from areal_sys.trajectory import Group
from controller.buffer import Buffer
from controller.staleness import StalenessManager


def test_capacity_matches_algorithms_md_example():
    # B = 512, eta = 4, i = 10 -> at most 7680 groups admitted
    gate = StalenessManager(batch_size=512, max_staleness=4, version=10)
    assert gate.capacity == 7680
    gate.accepted = 7679
    assert gate.can_admit()
    gate.on_admit()
    assert not gate.can_admit()
    with pytest.raises(RuntimeError):
        gate.on_admit()


def test_eta_zero_admits_one_batch_per_version():
    gate = StalenessManager(batch_size=4, max_staleness=0)
    admitted = 0
    while gate.can_admit():
        gate.on_admit()
        admitted += 1
    assert admitted == 4
    for _ in range(4):
        gate.on_accept()
    assert not gate.can_admit()  # accepted groups still hold their slots until the version moves
    gate.set_version(1)
    assert gate.can_admit()


def test_rejection_frees_a_slot():
    gate = StalenessManager(batch_size=2, max_staleness=0)
    gate.on_admit()
    gate.on_admit()
    assert not gate.can_admit()
    gate.on_reject()
    assert gate.can_admit()
    assert gate.rejected == 1


def _group(seq: int) -> Group:
    return Group(group_id=seq, prompt_uid=f"p{seq}")


def test_buffer_waits_for_due_groups():
    # B=1, eta=2: g0, g1, g2 admitted at v0 (deadline 2). If g2 trains at step 0 and g3 (v1,
    # deadline 3) at step 1, both g0 and g1 would be due at step 2: the buffer must refuse that.
    buf = Buffer(batch_size=1)
    for seq in range(3):
        buf.on_admit(seq, deadline=2)
    buf.put(2, _group(2))
    assert [g.group_id for g in buf.ready_batch(0)] == [2]
    buf.on_admit(3, deadline=3)
    buf.put(3, _group(3))
    assert buf.ready_batch(1) is None  # g0/g1 in flight and both due by version 2
    buf.put(0, _group(0))
    assert [g.group_id for g in buf.ready_batch(1)] == [0]


def test_buffer_oldest_deadline_first_and_exactly_once():
    buf = Buffer(batch_size=2)
    for seq, d in [(0, 1), (1, 1), (2, 2), (3, 2)]:
        buf.on_admit(seq, d)
    for seq in (3, 2, 1, 0):
        buf.put(seq, _group(seq))
    assert [g.group_id for g in buf.ready_batch(0)] == [0, 1]
    assert [g.group_id for g in buf.ready_batch(1)] == [2, 3]
    assert len(buf) == 0 and buf.ready_batch(2) is None


@pytest.mark.parametrize("eta", [0, 1, 2, 4])
def test_the_controller_never_trains_a_group_older_than_eta(tmp_path, eta):
    """The real controller (gate + buffer + step loop) over fake actors whose groups finish in
    any order (response lengths vary by group, two workers): every trained group obeys the
    bound, each exactly once, and every batch is full."""
    from areal_sys.metrics import read_jsonl
    from tests.controller import fakes

    B, n, steps = 3, 2, 12
    cfg = fakes.config(tmp_path, f"trainer.total_steps={steps}", f"controller.batch_size={B}",
                       f"controller.max_staleness={eta}", f"rollout.n_samples={n}",
                       "rollout.num_workers=2")
    fakes.run(cfg, fakes.fake_actors(tmp_path, workers=2, response_tokens=12, varied=True,
                                     train_ticks=5, seed=eta), fakes.prompts(100))
    audit = read_jsonl(tmp_path / "staleness.jsonl")
    for row in audit:
        assert row["step"] == row["trainer_version"]
        assert row["trainer_version"] - row["admit_version"] <= eta
        assert row["trainer_version"] - row["min_token_version"] <= eta
    groups = {}
    for row in audit:
        assert groups.setdefault(row["group_id"], row["step"]) == row["step"]
    assert sorted(Counter(groups.values()).items()) == [(s, B) for s in range(steps)]
    assert len(audit) == steps * B * n
    if eta > 0:  # groups finish out of order: the buffer, not admission order, picks batches
        assert any(row["admit_version"] < row["trainer_version"] for row in audit)


def test_take_batch_wakes_on_put():
    async def main():
        buf = Buffer(batch_size=1)
        buf.on_admit(0, 0)
        waiter = asyncio.create_task(buf.take_batch(0))
        await asyncio.sleep(0)
        assert not waiter.done()
        buf.put(0, _group(0))
        return await asyncio.wait_for(waiter, 1.0)

    assert [g.group_id for g in asyncio.run(main())] == [0]
