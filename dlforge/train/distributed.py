"""Data parallelism over processes: `torchrun --nproc_per_node=N -m dlforge train ...`.

torchrun starts N copies of the command and sets WORLD_SIZE, RANK and LOCAL_RANK; without them
everything here is a no-op. Each process (rank) holds the whole model and draws the same global batch
from the loader, then keeps its slice of it: --batch-size stays the global batch, and the loader's
position stays counted in global steps (so a run can resume on another number of processes).
DistributedDataParallel averages the gradients; each rank's loss is weighted by its share of the global
batch, so N processes take the step one process would take. Rank 0 alone writes files and prints.
Backend: NCCL on CUDA (one GPU per rank: cuda:LOCAL_RANK), gloo on CPU.

Tasks must run the model by calling it (`model(x)`): DDP synchronises gradients only for a forward pass
through its own __call__.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from dlforge.errors import DlforgeError


@dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def from_env() -> World:
    """The process's place in a torchrun launch (WORLD_SIZE, RANK, LOCAL_RANK); World() when alone."""
    try:
        w = World(*(int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0"))))
    except ValueError:
        raise DlforgeError("WORLD_SIZE / RANK / LOCAL_RANK: expected integers (torchrun sets them)") from None
    if not 0 <= w.rank < w.size:
        raise DlforgeError(f"RANK {w.rank}: expected 0..{w.size - 1} (WORLD_SIZE {w.size})")
    return w


_owned: list[bool] = []  # whether setup() created the process group (then teardown() ends it)


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group (once) -> (world, this rank's device: cuda:LOCAL_RANK under NCCL)."""
    w = from_env()
    if not w.active:
        return w, device
    if device.type == "cuda":
        device = torch.device("cuda", w.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise DlforgeError(f"--device {device.type}: several processes need CUDA (NCCL) or the CPU (gloo)")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _owned.append(True)
    if not w.main:  # rank 0 alone prints progress and results; every rank's errors still reach stderr
        sys.stdout = open(os.devnull, "w")
    return w, device


def teardown() -> None:
    if _owned and dist.is_initialized():
        dist.destroy_process_group()
        _owned.clear()


class _DDP(DistributedDataParallel):
    """DDP that lets the task read the model's own attributes (`model.recurrent`, `model.block_size`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":  # not set yet (inside DDP's __init__)
                raise
            return getattr(self.module, name)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module the training step runs. BatchNorm becomes SyncBatchNorm on CUDA (statistics over the
    global batch); PyTorch has no SyncBatchNorm on CPU, where each rank normalises over its own slice."""
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return _DDP(model, device_ids=[device.index])
    return _DDP(model)


def shard(batch: tuple[torch.Tensor, ...], w: World) -> tuple[tuple[torch.Tensor, ...], bool]:
    """This rank's slice of a global batch (dim 0; near-equal contiguous parts; 0-d tensors whole).
    -> (slice, counts). A batch with fewer rows than ranks leaves some ranks empty: those run the first
    row with counts=False, i.e. with weight 0, so that every rank still takes part in the backward pass."""
    if not w.active:
        return batch, True
    n = next((len(t) for t in batch if t.dim()), 0)
    if w.rank < n:
        return tuple(t.tensor_split(w.size)[w.rank] if t.dim() else t for t in batch), True
    return tuple(t[:1] if t.dim() else t for t in batch), False


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Σ over ranks of each value (float64: exact for counts)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def agree(flag: bool) -> bool:
    """Rank 0's answer, on every rank (e.g. --max-time: ranks must stop at the same step)."""
    obj = [flag]
    dist.broadcast_object_list(obj, src=0)
    return bool(obj[0])


def from_main(fn: Callable[[], Any], w: World) -> Any:
    """Run fn on rank 0 only; every rank gets its result, or raises its DlforgeError (one error, no hang)."""
    if not w.active:
        return fn()
    box: list[Any] = [None, None]
    if w.main:
        try:
            box[0] = fn()
        except DlforgeError as e:
            box[1] = str(e)
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise DlforgeError(box[1])
    return box[0]


def gather_rows(tensors: dict[str, torch.Tensor], dim: int, w: World) -> dict[str, torch.Tensor]:
    """Concatenate each rank's slice of per-row state (e.g. an RNN's (layers, B, hidden)) along dim, in
    rank order: the state of the global batch, as one process would have it."""
    parts: list[Any] = [None] * w.size
    dist.all_gather_object(parts, {k: v.detach().cpu() for k, v in tensors.items()})
    if any(set(p) != set(tensors) for p in parts):
        return {}
    return {k: torch.cat([p[k] for p in parts], dim) for k in tensors}


def slice_rows(tensors: dict[str, torch.Tensor], dim: int, w: World) -> dict[str, torch.Tensor]:
    """This rank's part of per-row state saved for the global batch (the inverse of gather_rows)."""
    return {k: v.tensor_split(w.size, dim)[w.rank] for k, v in tensors.items()}


def seed_rank(seed: int, w: World) -> None:
    """Give ranks 1.. RNG streams of their own (dropout masks, noise): rank 0 keeps the one-process stream."""
    if w.rank:
        torch.manual_seed((seed * 1_000_003 + w.rank) % 2 ** 63)


def rng_states(w: World) -> dict[str, torch.Tensor]:
    """Every rank's RNG state but rank 0's (which checkpoints keep as rng.torch / rng.cuda), for exact resume:
    rng.rank<r>.torch, rng.rank<r>.cuda."""
    mine = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        mine["cuda"] = torch.cuda.get_rng_state()
    parts: list[Any] = [None] * w.size
    dist.all_gather_object(parts, mine)
    return {f"rng.rank{r}.{k}": v for r, p in enumerate(parts) if r for k, v in p.items()}


def restore_rng(tensors: dict[str, torch.Tensor], w: World, seed: int, step: int) -> None:
    """Rank r>0 takes back its own stream; on more ranks than the checkpoint had, a new one of its own."""
    if not w.rank:
        return
    if f"rng.rank{w.rank}.torch" not in tensors:
        seed_rank(seed * 7919 + step, w)
        return
    torch.set_rng_state(tensors[f"rng.rank{w.rank}.torch"])
    if f"rng.rank{w.rank}.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"rng.rank{w.rank}.cuda"])
