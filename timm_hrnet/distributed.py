"""Joining the process group `torchrun` sets up (no launcher of our own): rank, world size and this rank's device,
leaving it again, and the few collectives training needs. Without torchrun everything is one rank. Training,
evaluation and `validate` all go through `process_group`."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ['DistContext', 'process_group', 'init_distributed', 'close_distributed', 'all_reduce_sum', 'gather_objects',
           'barrier']


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, its device, and whether it created the process group."""

    rank: int
    world_size: int
    device: torch.device
    created_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _device(device: str | torch.device | None, local_rank: int, world_size: int) -> torch.device:
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(device)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'device {device} requested but CUDA is not available')
        if world_size > 1 or device.index is None:
            device = torch.device('cuda', local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def init_distributed(device: str | torch.device | None = None) -> DistContext:
    """Join torchrun's group (environment WORLD_SIZE > 1; nccl on CUDA, gloo on CPU) or run as the only rank.
    An already initialised group is used as it is."""
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        return DistContext(rank, world_size, _device(device, int(os.environ.get('LOCAL_RANK', rank)), world_size))
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    resolved = _device(device, int(os.environ.get('LOCAL_RANK', '0')), world_size)
    if world_size == 1:
        return DistContext(0, 1, resolved)
    dist.init_process_group(backend='nccl' if resolved.type == 'cuda' else 'gloo',
                            device_id=resolved if resolved.type == 'cuda' else None)
    return DistContext(rank, world_size, resolved, created_group=True)


# Before torch 2.8 (pytorch#154976) a gloo group is destroyed holding the GIL while it joins its worker threads, and
# a worker still releasing the last collective's tensors needs the GIL: destroy_process_group can deadlock.
_GLOO_DESTROY_CAN_DEADLOCK = tuple(int(part) for part in torch.__version__.split('.')[:2]) < (2, 8)


def close_distributed(context: DistContext) -> None:
    """Leave the group this context created, every rank together. A gloo group on torch < 2.8 is left to the
    exiting process instead of destroyed (see above); a later `init_distributed` in the same process reuses it."""
    if context.created_group and dist.is_initialized():
        dist.barrier()
        if not (_GLOO_DESTROY_CAN_DEADLOCK and dist.get_backend() == 'gloo'):
            dist.destroy_process_group()


@contextmanager
def process_group(device: str | torch.device | None = None) -> Iterator[DistContext]:
    """`init_distributed` for a `with` block, left with `close_distributed` when the block succeeds. A failed block
    leaves the group to the exiting process: a rank that failed alone would wait in the barrier for ranks stuck
    elsewhere."""
    context = init_distributed(device)
    yield context
    close_distributed(context)


def all_reduce_sum(values: torch.Tensor, context: DistContext) -> torch.Tensor:
    """The sum over ranks (float64 on the device nccl needs)."""
    if context.world_size == 1:
        return values
    reduced = values.detach().to(context.device, torch.float64).clone()
    dist.all_reduce(reduced)
    return reduced


def gather_objects(value: Any, context: DistContext) -> list[Any]:
    if context.world_size == 1:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(context: DistContext) -> None:
    if context.world_size > 1:
        dist.barrier()
