"""torchrun / DistributedDataParallel set-up (NCCL on CUDA, gloo on CPU), on one machine or several.

torchrun sets, per process: ``RANK`` and ``WORLD_SIZE`` (over all machines: they decide sharding and which
process writes files), ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` (on this machine: they decide the GPU and the
loader workers).
"""
from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Sampler, default_collate

from utils.errors import UserError, _one_line

# How long a collective may wait for a rank before the run fails, instead of hanging (PyTorch's default is
# 10-30 minutes). Errors are shared at every step (raise_if_any_failed), so only a dead machine waits this long.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    # a CPU (gloo) group for sharing failures without a GPU synchronisation; None: the default group
    control_group: Any = field(default=None, compare=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def nnodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def dist_info_from_env() -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(rank=int(os.environ.get("RANK", "0")), world_size=world,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                    local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


def select_device(flag: str | None, info: Optional[DistInfo] = None) -> torch.device:
    """``--device`` or CUDA when present, else CPU; each torchrun process takes the GPU of its ``LOCAL_RANK``."""
    info = info or DistInfo()
    name = flag or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name} is not a device (use cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: only cpu and cuda are supported")
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.index is not None and info.enabled:
        raise UserError(f"--device {name} under torchrun would put all {info.local_world_size} processes of this "
                        f"machine on one GPU: give --device cuda (process LOCAL_RANK takes GPU LOCAL_RANK) and "
                        f"choose the GPUs with CUDA_VISIBLE_DEVICES")
    index = info.local_rank if device.index is None else device.index
    visible = torch.cuda.device_count()
    if index >= visible:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else ""
        if device.index is not None:
            raise UserError(f"--device {name}: this machine shows {visible} GPU(s){where}; use cuda:0..cuda:"
                            f"{visible - 1}")
        raise UserError(f"LOCAL_RANK={index} but this process sees {visible} GPU(s){where}: start at most "
                        f"{visible} process(es) per machine (torchrun --nproc_per_node {visible}), and when a "
                        f"scheduler gives each task one GPU give every task all of its machine's GPUs instead "
                        f"(e.g. SLURM --gpus-per-node, one torchrun per node)")
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    return device


def init_distributed(device_flag: str | None) -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    info = dist_info_from_env()
    device = select_device(device_flag, info)
    if info.enabled:
        if not dist.is_initialized():
            if device.type == "cuda":
                dist.init_process_group(backend="nccl", device_id=device, timeout=COLLECTIVE_TIMEOUT)
            else:
                dist.init_process_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)
        control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if device.type == "cuda" else None
        info = DistInfo(info.rank, info.world_size, info.local_rank, info.local_world_size, control)
    return info, device


def default_workers(info: DistInfo, cap: int = 8) -> int:
    """Loader workers per process: the machine's cores shared by the processes running on it (at most ``cap``)."""
    return max(1, min(cap, (os.cpu_count() or 1) // max(1, info.local_world_size)))


def raise_if_any_failed(info: DistInfo, error: Optional[BaseException]) -> None:
    """A check point every process reaches: when any process brings an error, every process stops.

    The process that failed raises its own error; the others raise a UserError naming it and its message, so
    no process is left waiting in a collective. One small all-reduce on the CPU (gloo) group.
    """
    if not info.enabled:
        if error is not None:
            raise error
        return
    flag = torch.tensor([0 if error is None else 1], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=info.control_group)
    if not int(flag):
        return
    messages: list[Optional[str]] = [None] * info.world_size
    mine = None if error is None else (_one_line(error) or type(error).__name__)
    dist.all_gather_object(messages, mine, group=info.control_group)
    if error is not None:
        raise error
    rank, message = next((r, m) for r, m in enumerate(messages) if m is not None)
    raise UserError(f"process {rank} of {info.world_size} stopped the run: {message}")


class SharedFailure:
    """``with SharedFailure(info):`` -- a block after which every process learns whether any process failed."""

    def __init__(self, info: DistInfo):
        self.info = info

    def __enter__(self) -> "SharedFailure":
        return self

    def __exit__(self, kind, error, tb) -> bool:
        # Ctrl-C and SystemExit: every process gets its own; a single process has no one to tell
        if not self.info.enabled or (error is not None and not isinstance(error, Exception)):
            return False
        raise_if_any_failed(self.info, error)
        return False


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def average_gradients(params, info: DistInfo) -> None:
    """Mean of the gradients over processes, as DDP takes it (for parameters outside DDP: the teacher head)."""
    if not info.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(info.world_size)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------- the global batch
def rank_share(n: int, world_size: int, rank: int) -> slice:
    """Process ``rank``'s slice of ``n`` items: consecutive, sizes differing by at most one (the first
    ``n % world_size`` processes take one more)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


class GlobalBatchSampler(Sampler[list[int]]):
    """This process's share of each global batch.

    The global batches are what one process would draw: a seeded permutation per epoch (the order
    ``DistributedSampler`` gives one process), cut into ``global_batch`` items, the last batch shorter. With
    ``world_size`` processes, each global batch is split by :func:`rank_share`, so any process count trains the
    same global batch; a share may be empty (``collate_or_none`` then gives None).
    """

    def __init__(self, n_items: int, global_batch: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        self.n_items, self.global_batch = n_items, global_batch
        self.world_size, self.rank, self.seed, self.shuffle = world_size, rank, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n_items / self.global_batch)

    def global_sizes(self) -> list[int]:
        """The size of each global batch of an epoch (the denominators of the loss terms)."""
        return [min(self.global_batch, self.n_items - start) for start in range(0, self.n_items, self.global_batch)]

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n_items, generator=g).tolist()
        else:
            order = list(range(self.n_items))
        for start in range(0, self.n_items, self.global_batch):
            batch = order[start:start + self.global_batch]
            yield batch[rank_share(len(batch), self.world_size, self.rank)]


def collate_or_none(batch: list) -> Any:
    """default_collate, or None for an empty share of a global batch."""
    return default_collate(batch) if batch else None
