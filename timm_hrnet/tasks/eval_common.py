"""What the pose and segmentation evaluations share: sharding over an initialised torch.distributed group, a bad
file on one rank stopping every rank with the same error (rather than leaving the others waiting in a collective),
bounded read-ahead of images."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ['rank_and_world_size', 'gather_or_raise', 'broadcast_from_main', 'max_over_ranks', 'read_ahead']

T = TypeVar('T')
R = TypeVar('R')


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_or_raise(payload: Any, error: BaseException | None, error_type: type[Exception]) -> list[Any]:
    """Every rank's `payload`, in rank order. If any rank failed, every rank raises: the failing rank its own
    error, the others the first failing rank's message, as `error_type` when it was a ValueError (bad input), else
    as RuntimeError."""
    _, world_size = rank_and_world_size()
    if world_size == 1:
        if error is not None:
            raise error
        return [payload]
    report = None if error is None else (isinstance(error, ValueError), str(error))
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, (report, None if error is not None else payload))
    if error is not None:
        raise error
    failed = next((item for item, _ in gathered if item is not None), None)
    if failed is not None:
        data_error, message = failed
        raise error_type(message) if data_error else RuntimeError(f'another rank failed: {message}')
    return [part for _, part in gathered]


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (the value itself without a process group)."""
    if rank_and_world_size()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def max_over_ranks(value: float) -> float:
    """The largest `value` of all ranks (a wall-clock time: the slowest rank decides)."""
    if rank_and_world_size()[1] == 1:
        return value
    device = torch.device('cuda', torch.cuda.current_device()) if dist.get_backend() == 'nccl' else None
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def read_ahead(function: Callable[[T], R], items: Iterable[T], depth: int) -> Iterator[tuple[T, R]]:
    """(item, function(item)) in order, with up to `depth` calls running ahead in threads (image decoding releases
    the GIL); `depth` 0 calls inline. At most `depth` results wait in memory."""
    if depth <= 0:
        for item in items:
            yield item, function(item)
        return
    iterator, end = iter(items), object()
    with ThreadPoolExecutor(max_workers=depth) as pool:
        pending: deque[tuple[T, Future[R]]] = deque()

        def submit_next() -> None:
            item = next(iterator, end)
            if item is not end:
                pending.append((item, pool.submit(function, item)))

        for _ in range(depth):
            submit_next()
        while pending:
            item, future = pending.popleft()
            submit_next()
            yield item, future.result()
