"""torchrun / DistributedDataParallel set-up (NCCL on CUDA, gloo on CPU), on one machine or several.

torchrun sets, per process: ``RANK`` and ``WORLD_SIZE`` (over all machines: they decide sharding and which
process writes files), ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` (on this machine: they decide the GPU and the
loader workers).

Failures: a process that fails tells the others at the next check-in (:func:`raise_if_any_failed`, a small
all-reduce on a CPU group), and every process stops with the message; a process whose collectives cannot go on
(a failure inside backward) writes its message into the process group's store before it aborts, so the others,
whose collectives then fail, name it (:func:`explain_failure`). On any failure the group is aborted
(:func:`cleanup`), never destroyed collectively: a destroy waits for collectives a failed peer will never join.
"""
from __future__ import annotations

import datetime
import math
import os
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Sampler, default_collate

from utils.errors import UserError, _one_line, is_user_error

# How long a collective may wait for a rank before the run fails, instead of hanging (PyTorch's default is
# 10-30 minutes). Errors are shared at every check-in (raise_if_any_failed), so only a dead machine waits this long.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)
FAILURE_KEY = "sbka/failed/{rank}"      # a process's last words in the process group's store


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    # a CPU (gloo) group for sharing failures without a GPU synchronisation; None: the default group
    control_group: Any = field(default=None, compare=False, repr=False)
    # a process group (DDP, the control group, the averaging) even for one process: --force_process_group
    forced: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.forced

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


def init_distributed(device_flag: str | None, force: bool = False) -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1), or for one process when
    ``force`` (``--force_process_group``: DDP, NCCL with ``device_id``, the control group and the averaging
    run as with several processes; without torchrun's variables an in-process store serves)."""
    info = dist_info_from_env()
    if force:
        info = replace(info, forced=True)
    device = select_device(device_flag, info)
    if info.enabled:
        if not dist.is_initialized():
            options: dict[str, Any] = {"timeout": COLLECTIVE_TIMEOUT}
            if "MASTER_ADDR" not in os.environ and info.world_size == 1:
                options.update(store=dist.HashStore(), rank=0, world_size=1)
            if device.type == "cuda":
                dist.init_process_group(backend="nccl", device_id=device, **options)
            else:
                dist.init_process_group(backend="gloo", **options)
        control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if device.type == "cuda" else None
        info = replace(info, control_group=control)
    return info, device


def _message(error: BaseException) -> str:
    return _one_line(error) or type(error).__name__


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
    try:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=info.control_group)
    except Exception as exc:  # noqa: BLE001 - a peer died or aborted: name it when it left word
        if error is not None:
            raise error from None
        raise explain_failure(info, exc) from None
    if not int(flag):
        return
    messages: list[Optional[str]] = [None] * info.world_size
    mine = None if error is None else _message(error)
    dist.all_gather_object(messages, mine, group=info.control_group)
    if error is not None:
        raise error
    rank, message = next((r, m) for r, m in enumerate(messages) if m is not None)
    raise UserError(f"process {rank} of {info.world_size} stopped the run: {message}")


def _store() -> Optional[Any]:
    try:
        return dist.distributed_c10d._get_default_store() if dist.is_initialized() else None
    except Exception:  # noqa: BLE001 - no store (or a PyTorch without this accessor): nothing to tell
        return None


def announce_failure(info: DistInfo, error: BaseException) -> None:
    """Leave this process's message in the process group's store, for peers whose collectives its abort breaks."""
    store = _store()
    if store is None or not info.enabled:
        return
    try:
        store.set(FAILURE_KEY.format(rank=info.rank), _message(error))
    except Exception:  # noqa: BLE001 - the store's host is gone: the peers learn from their failed collectives
        pass


def peer_failure(info: DistInfo, wait_s: float = 0.0) -> Optional[tuple[int, str]]:
    """(rank, message) of a peer that announced a failure, waiting up to ``wait_s`` for one to appear."""
    store = _store()
    if store is None or not info.enabled:
        return None
    keys = {r: FAILURE_KEY.format(rank=r) for r in range(info.world_size) if r != info.rank}
    deadline = time.monotonic() + wait_s
    while True:
        try:
            for rank, key in keys.items():
                if store.check([key]):
                    return rank, store.get(key).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - the store itself went with the failed process
            return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def explain_failure(info: DistInfo, error: BaseException) -> BaseException:
    """What a process should raise for ``error``: a UserError naming a peer that failed first (its collectives
    broke because that peer aborted), else ``error`` itself, after announcing it to the peers."""
    if not info.enabled or is_user_error(error):
        return error
    peer = peer_failure(info)
    if peer is not None:
        return UserError(f"process {peer[0]} of {info.world_size} stopped the run: {peer[1]}")
    announce_failure(info, error)
    return error


class DeferredFailure:
    """This process's first error of an epoch, held until the next check-in (several processes only).

    A process whose data or forward pass failed goes on with empty shares until then, so that the others'
    collectives (DDP's gradient all-reduce, the teacher-head average) are still met; at the check-in every
    process stops with its message. The held error keeps its traceback for printing, but not the local
    variables of its frames (after an out-of-memory error those hold the tensors that filled the memory).
    One process alone has no one to wait for: the error is raised at once.
    """

    def __init__(self, info: DistInfo):
        self.info = info
        self.error: Optional[BaseException] = None

    def record(self, error: BaseException) -> None:
        if not self.info.enabled:
            raise error
        if self.error is None:
            traceback.clear_frames(error.__traceback__)
            self.error = error

    def raise_held(self) -> None:
        if self.error is not None:
            raise self.error


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


def average_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Mean of the gradients over processes, as DDP takes it (for parameters outside DDP: the teacher head).

    Every parameter takes part on every process, a missing gradient as zeros (a process that skipped a part of
    the model must not leave the others waiting), in one flattened all-reduce per dtype; afterwards every
    process holds the same gradient for every parameter.
    """
    if not info.enabled:
        return
    groups: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:                                   # the same order on every process
        groups.setdefault(p.dtype, []).append(p)
    for group in groups.values():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(info.world_size)
        offset = 0
        for p in group:
            mean = flat[offset:offset + p.numel()].view(p.shape)
            offset += p.numel()
            if p.grad is None:
                p.grad = mean.clone()
            else:
                p.grad.copy_(mean)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo, failed: bool = False) -> None:
    """End the process group: destroyed after a run that ended well, aborted after a failure (a destroy would
    wait for collectives that a failed peer never joins; an abort returns at once)."""
    if not (info.enabled and dist.is_initialized()):
        return
    if failed:
        try:
            dist.distributed_c10d._abort_process_group()
            return
        except Exception:  # noqa: BLE001 - no abort in this PyTorch: leave the group to the process's exit
            return
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
    same global batch; a share may be empty (``collate_or_none`` then gives None). ``keyed``: items are
    ``(index, epoch)`` pairs, for a dataset that draws each item's augmentation from its own generator
    (data.dataset.SeededAugmentation).
    """

    def __init__(self, n_items: int, global_batch: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, keyed: bool = False):
        self.n_items, self.global_batch = n_items, global_batch
        self.world_size, self.rank, self.seed, self.shuffle, self.keyed = world_size, rank, seed, shuffle, keyed
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
            share = order[start:start + self.global_batch]
            share = share[rank_share(len(share), self.world_size, self.rank)]
            yield [(i, self.epoch) for i in share] if self.keyed else share


def collate_or_none(batch: list) -> Any:
    """default_collate, or None for an empty share of a global batch."""
    return default_collate(batch) if batch else None
