"""The admission gate (AReaL inequality) and the deadline-feasible, oldest-first buffer."""

import asyncio
import random

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
def test_simulated_async_run_never_exceeds_eta(eta):
    """Random completion order, gate + buffer together: every trained group obeys the bound."""
    rng = random.Random(eta)
    B = 3
    gate = StalenessManager(batch_size=B, max_staleness=eta)
    buf = Buffer(batch_size=B)
    running: dict[int, int] = {}  # seq -> admit version
    seq = 0
    trained = []

    async def main():
        nonlocal seq
        for step in range(30):
            while True:
                while gate.can_admit():
                    running[seq] = gate.on_admit()
                    buf.on_admit(seq, gate.deadline())
                    seq += 1
                batch = buf.ready_batch(step)
                if batch is not None:
                    break
                done = rng.choice(list(running))  # some in-flight group finishes
                g = _group(done)
                g.admit_version = running.pop(done)
                buf.put(done, g)
                gate.on_accept()
            for g in batch:
                assert step - g.admit_version <= eta
                trained.append(g.group_id)
            gate.set_version(step + 1)

    asyncio.run(main())
    assert len(trained) == len(set(trained)) == 30 * B


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


@pytest.mark.parametrize("eta", [0, 1, 3])
def test_filtered_groups_free_their_slot_and_never_count_toward_a_batch(eta):
    """Dynamic sampling under the gate: about half the scored groups are filtered (dropped from
    the buffer, `on_reject`). Batches stay full, the bound holds, and every admitted group is
    either trained exactly once or filtered, never both."""
    rng = random.Random(100 + eta)
    B = 3
    gate = StalenessManager(batch_size=B, max_staleness=eta)
    buf = Buffer(batch_size=B)
    running: dict[int, int] = {}
    seq = 0
    trained: list[int] = []
    filtered: list[int] = []

    async def main():
        nonlocal seq
        for step in range(20):
            while True:
                while gate.can_admit():
                    running[seq] = gate.on_admit()
                    buf.on_admit(seq, gate.deadline())
                    seq += 1
                assert gate.accepted + gate.running <= gate.capacity
                batch = buf.ready_batch(step)
                if batch is not None:
                    break
                done = rng.choice(list(running))
                admit_version = running.pop(done)
                if rng.random() < 0.5:  # the filter drops it: its slot is refilled
                    buf.drop(done)
                    gate.on_reject()
                    filtered.append(done)
                    continue
                g = _group(done)
                g.admit_version = admit_version
                buf.put(done, g)
                gate.on_accept()
            assert len(batch) == B
            for g in batch:
                assert step - g.admit_version <= eta
                trained.append(g.group_id)
            gate.set_version(step + 1)

    asyncio.run(main())
    assert len(trained) == len(set(trained)) == 20 * B
    assert not set(trained) & set(filtered)
    assert gate.rejected == len(filtered) > 0
    buffered = {g.group_id for _, _, g in buf.completed_groups()}
    assert set(trained) | set(filtered) | set(running) | buffered == set(range(seq))
