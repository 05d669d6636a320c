"""Weight-sync building blocks: the bucket plan, and a real gloo broadcast between two threads.

(The end-to-end check, a rollout engine serving broadcast weights, is in test_rollout.py.)
"""

from __future__ import annotations

import threading

import pytest
import torch

from areal_sys.ports import free_port
from workers.weight_sync import (
    ALIGN,
    SyncGroup,
    bucket_nbytes,
    plan_buckets,
    tensor_meta,
    write_safetensors,
)


def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(37, 16, generator=g),
        "norm.weight": torch.randn(16, generator=g).to(torch.bfloat16),
        "big.weight": torch.randn(300, 40, generator=g),  # 48 000 bytes: larger than a bucket
        "steps": torch.arange(5, dtype=torch.int64),
        "odd.bias": torch.randn(3, generator=g).to(torch.float16),
    }


def test_bucket_plan_is_aligned_bounded_and_ordered() -> None:
    meta = tensor_meta(weights())
    buckets = plan_buckets(meta, bucket_bytes=4096)
    slots = [s for b in buckets for s in b]
    assert [s.name for s in slots] == [m[0] for m in meta]
    assert all(s.offset % ALIGN == 0 for s in slots)
    for b in buckets:
        assert bucket_nbytes(b) <= 4096 or len(b) == 1  # only a lone oversized tensor exceeds it
        ends = [s.offset + s.nbytes for s in b]
        assert all(end <= nxt.offset for end, nxt in zip(ends, b[1:], strict=False))
    big = next(b for b in buckets if b[0].name == "big.weight")
    assert len(big) == 1 and big[0].nbytes == 300 * 40 * 4
    (one,) = plan_buckets(meta, 1 << 30)  # everything fits one bucket
    assert [s.name for s in one] == [s.name for s in slots]
    with pytest.raises(ValueError):
        plan_buckets(meta, 0)


@pytest.mark.parametrize("bucket_bytes", [1024, 1 << 20])
def test_gloo_broadcast_round_trip_is_bit_exact(bucket_bytes: int) -> None:
    sd = weights()
    meta = tensor_meta(sd)
    port = free_port()
    sender: dict[str, object] = {}

    def rank0() -> None:
        group = SyncGroup("127.0.0.1", port, 0, 2, meta, bucket_bytes=bucket_bytes,
                          backend="gloo", timeout_s=60)
        sender["bytes"] = group.send(sd)

    thread = threading.Thread(target=rank0)
    thread.start()
    receiver = SyncGroup("127.0.0.1", port, 1, 2, meta, bucket_bytes=bucket_bytes,
                         backend="gloo", timeout_s=60)
    got = {name: t.clone() for name, t in receiver.receive()}
    thread.join(timeout=60)
    assert list(got) == list(sd)
    for name, t in sd.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    assert sender["bytes"] == sum(bucket_nbytes(b) for b in receiver.buckets)


def test_sender_refuses_weights_that_changed_shape() -> None:
    sd = weights()
    port = free_port()
    errors: list[BaseException] = []
    meta = tensor_meta(sd)

    def rank1() -> None:
        SyncGroup("127.0.0.1", port, 1, 2, meta, bucket_bytes=1 << 20, backend="gloo",
                  timeout_s=10)

    thread = threading.Thread(target=rank1)
    thread.start()
    group = SyncGroup("127.0.0.1", port, 0, 2, meta, bucket_bytes=1 << 20, backend="gloo",
                      timeout_s=10)
    thread.join(timeout=30)
    sd["steps"] = torch.arange(6)
    try:
        group.send(sd)
    except ValueError as e:
        errors.append(e)
    assert errors and "steps" in str(errors[0])


def test_safetensors_written_atomically(tmp_path) -> None:
    from safetensors.torch import load_file

    sd = weights()
    n = write_safetensors(sd, str(tmp_path / "sync" / "w.safetensors"))
    assert n == (tmp_path / "sync" / "w.safetensors").stat().st_size
    assert [p.name for p in (tmp_path / "sync").iterdir()] == ["w.safetensors"]  # no temp left
    back = load_file(str(tmp_path / "sync" / "w.safetensors"))
    assert all(torch.equal(back[k], v) for k, v in sd.items())


def _receiver(port: int, meta: list, syncs: int, die_in_sync: int | None, out: object) -> None:
    """A rollout engine's side in its own process: `syncs` broadcasts, each checked bit-exact
    against `big_weights()`; with `die_in_sync`, the process exits after that sync's first
    bucket, as a worker whose node is lost."""
    import os

    group = SyncGroup("127.0.0.1", port, 1, 2, meta, bucket_bytes=1 << 20, backend="gloo",
                      timeout_s=60)
    want = big_weights()
    for k in range(syncs):
        for j, (name, t) in enumerate(group.receive()):
            if k == die_in_sync and j == 1:
                os._exit(1)
            assert torch.equal(t, want[name]), name
        out.put(k)  # type: ignore[attr-defined]


def big_weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {f"w{i}": torch.randn(1 << 18, generator=g) for i in range(16)}  # 16 MiB, 16 buckets


@pytest.mark.integration
def test_an_engine_dying_mid_broadcast_fails_only_its_own_group() -> None:
    """Rank 0 sends to two engines, one group each (`fan_out`); one engine dies after the first
    bucket of the second sync: the other receives every bucket of every sync, rank 0 names the
    dead one in `failed` at once, and a restarted engine joins a new group and gets the
    weights. (With one group of all ranks the survivor waited for the group's timeout.)"""
    import multiprocessing as mp
    import queue

    from workers.weight_sync import fan_out

    sd = big_weights()
    meta = tensor_meta(sd)
    ctx = mp.get_context("spawn")  # fork would copy torch's thread pools
    got: mp.Queue = ctx.Queue()
    ports = [free_port() for _ in range(3)]
    survivor = ctx.Process(target=_receiver, args=(ports[0], meta, 3, None, got))
    doomed = ctx.Process(target=_receiver, args=(ports[1], meta, 2, 1, got))
    # the restarted engine's process starts now (interpreter start-up is most of this test's
    # time) and waits for its group's store
    restarted = ctx.Process(target=_receiver, args=(ports[2], meta, 1, None, got))
    for p in (survivor, doomed, restarted):
        p.start()

    def group(port: int) -> SyncGroup:
        return SyncGroup("127.0.0.1", port, 0, 2, meta, bucket_bytes=1 << 20, backend="gloo",
                         timeout_s=60)

    groups = {0: group(ports[0]), 1: group(ports[1])}
    try:
        assert fan_out(groups, sd)[1] == {}
        assert sorted(got.get(timeout=30) for _ in range(2)) == [0, 0]
        sent, failed = fan_out(groups, sd)
        assert list(failed) == [1] and "Connection" in failed[1], failed
        assert sent == sum(t.numel() * 4 for t in sd.values())
        assert got.get(timeout=30) == 1  # the survivor got the whole second sync
        doomed.join(timeout=30)
        assert doomed.exitcode == 1
        groups[1] = group(ports[2])  # its new group replaces the old
        assert fan_out(groups, sd)[1] == {}
        assert sorted(got.get(timeout=30) for _ in range(2)) == [0, 2]
        restarted.join(timeout=30)
        survivor.join(timeout=30)
        assert survivor.exitcode == 0 and restarted.exitcode == 0
        with pytest.raises(queue.Empty):
            got.get(timeout=0.1)
    finally:
        for p in mp.active_children():
            p.kill()
