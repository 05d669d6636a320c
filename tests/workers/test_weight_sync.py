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
