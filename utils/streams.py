"""Host-to-device copies beside the compute: each batch is made on a side CUDA stream, so its copy (from pinned
memory, ``non_blocking``) overlaps the kernels of the step before, which run on the compute stream."""
from __future__ import annotations

from typing import Iterator, TypeVar

import torch

T = TypeVar("T")


def _tensors(item: object) -> Iterator[torch.Tensor]:
    if isinstance(item, torch.Tensor):
        yield item
    elif isinstance(item, (tuple, list)):
        for part in item:
            yield from _tensors(part)


def on_side_stream(items: Iterator[T], device: torch.device) -> Iterator[T]:
    """``items`` with each ``next`` run on a side stream of ``device``; the compute stream waits for it before
    it uses the item, and the item's tensors are recorded on the compute stream (the caching allocator then
    keeps their memory until the compute stream is done with them). Elsewhere than on CUDA: ``items`` as they
    are. Errors of ``next`` come out of this iterator unchanged, at the same item."""
    if device.type != "cuda":
        yield from items
        return
    side = torch.cuda.Stream(device)
    while True:
        with torch.cuda.stream(side):
            try:
                item = next(items)
            except StopIteration:
                return
        compute = torch.cuda.current_stream(device)
        compute.wait_stream(side)
        for tensor in _tensors(item):
            if tensor.device.type == "cuda":
                tensor.record_stream(compute)
        yield item
