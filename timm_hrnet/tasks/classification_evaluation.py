"""ImageNet-style classification evaluation (top-1 / top-k, loss), single process or sharded under `torchrun`,
beside the pose and segmentation evaluations; `timm-hrnet validate` is its command line.

Under `torchrun` every rank evaluates the samples `rank::world_size` (no padding, so no sample is counted twice)
and the per-rank sums of correct predictions, loss and image counts are all-reduced, which makes the numbers
identical to a single-process run. No DistributedDataParallel wrapper is needed because nothing is trained. Bad
input (a missing folder, a malformed split file, labels beyond the model's classes) is a ValueError or
FileNotFoundError naming the file; an unreadable image is counted and reported, not fatal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from tqdm import tqdm

from ..distributed import DistContext, process_group
from ..images import UnreadableImageError, to_pil

__all__ = ['EvalImageDataset', 'amp_autocast', 'evaluate_classifier', 'read_samples']


def amp_autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """Mixed precision for `amp=True`: float16 on CUDA, bfloat16 on CPU (where float16 kernels are slow or missing)."""
    return torch.autocast(device.type, dtype=torch.float16 if device.type == 'cuda' else torch.bfloat16,
                          enabled=enabled)


def _device(device: str | None) -> torch.device:
    try:
        resolved = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    except RuntimeError as error:
        raise ValueError(f'invalid device {device!r}: {error}') from error
    if resolved.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {device} requested but CUDA is not available')
    return resolved


def read_samples(data_dir: str | Path, split_file: str | Path | None = None) -> list[tuple[str, int]]:
    """`(path, label)` pairs: from an annotation file of `relative/path label` lines when given, else from
    class sub-folders numbered in sorted order exactly as torchvision's ImageFolder numbers them."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f'data directory not found: {data_dir}')
    if split_file is None:
        try:
            _, class_to_idx = find_classes(data_dir)
            return make_dataset(data_dir, class_to_idx, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as error:
            raise ValueError(f'{error} (for a flat folder of images give a split file: --split-file)') from error
    split_file = Path(split_file)
    if not split_file.is_file():
        raise FileNotFoundError(f'split file not found: {split_file}')
    samples = []
    for line_number, line in enumerate(split_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        relative_path, _, label = line.strip().rpartition(' ')
        if not relative_path or not label.isdigit():
            raise ValueError(f'{split_file}:{line_number}: expected "relative/path label", got {line!r}')
        samples.append((str(data_dir / relative_path), int(label)))
    if not samples:
        raise ValueError(f'split file {split_file} lists no images')
    return samples


class EvalImageDataset(Dataset):
    """Decoded, preprocessed images; an unreadable file yields a zero image and the failure reason instead of raising,
    so that one bad file neither stops the evaluation nor shifts the counts."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        transform: Callable[[Image.Image], torch.Tensor],
        input_size: tuple[int, int, int],
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.input_size = tuple(input_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, str]:
        path, label = self.samples[index]
        try:
            return self.transform(to_pil(path, 'RGB')), label, index, ''
        except UnreadableImageError as error:
            return torch.zeros(self.input_size), label, index, error.reason


@torch.inference_mode()
def evaluate_classifier(
    model: nn.Module,
    samples: list[tuple[str, int]],
    *,
    img_size: int | None = None,
    crop_pct: float | None = None,
    batch_size: int = 64,
    workers: int = 4,
    channels_last: bool = False,
    amp: bool = False,
    device: str | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on `samples`; returns top-1 and top-k (percent), mean loss, counts, throughput, unreadables.

    k is 5, or the class count when there are fewer (`topk` holds it; the key is `top<k>`, absent when k is 1).

    Shards over the `torchrun` process group when there is one; every rank returns the same global numbers.
    """
    with process_group(_device(device)) as context:
        return _evaluate(model, samples, context, img_size, crop_pct, batch_size, workers, channels_last, amp)


def _evaluate(
    model: nn.Module,
    samples: list[tuple[str, int]],
    context: DistContext,
    img_size: int | None,
    crop_pct: float | None,
    batch_size: int,
    workers: int,
    channels_last: bool,
    amp: bool,
) -> dict[str, Any]:
    num_classes = model.num_classes
    largest_label = max(label for _, label in samples)
    if largest_label >= num_classes:
        raise ValueError(f'the data has label {largest_label} but the model has only {num_classes} classes')
    data_config = resolve_data_config({'img_size': img_size, 'crop_pct': crop_pct}, model=model)
    transform = create_transform(**data_config, is_training=False)
    dataset = EvalImageDataset(samples, transform, data_config['input_size'])
    shard = Subset(dataset, range(context.rank, len(dataset), context.world_size))
    loader = DataLoader(
        shard, batch_size=batch_size, num_workers=workers, pin_memory=context.device.type == 'cuda'
    )
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(context.device, memory_format=memory_format).eval()
    maxk = min(5, num_classes)

    # float64 sums: exact counts and a loss total whose rounding does not depend on how samples were sharded
    totals = torch.zeros(4, dtype=torch.float64, device=context.device)  # top-1 hits, top-k hits, loss, images
    unreadable: list[dict[str, str]] = []
    start = time.perf_counter()
    for images, labels, indices, reasons in tqdm(loader, desc='validate', unit='batch', disable=not context.is_main):
        readable = torch.tensor([reason == '' for reason in reasons])
        unreadable += [
            {'path': samples[int(index)][0], 'reason': reason}
            for index, reason, ok in zip(indices, reasons, readable, strict=True) if not ok
        ]
        if not readable.any():
            continue
        images = images[readable].to(context.device, memory_format=memory_format, non_blocking=True)
        labels = labels[readable].to(context.device, non_blocking=True)
        with amp_autocast(context.device, amp):
            logits = model(images)
        logits = logits.float()
        hits = logits.topk(maxk, dim=1).indices == labels[:, None]
        totals += torch.stack([
            hits[:, 0].sum(), hits.any(dim=1).sum(), F.cross_entropy(logits, labels, reduction='sum'),
            torch.tensor(len(labels), device=context.device),
        ]).double()
    if context.world_size > 1:
        dist.all_reduce(totals)
        gathered: list[list[dict[str, str]]] = [[] for _ in range(context.world_size)]
        dist.all_gather_object(gathered, unreadable)
        unreadable = [item for part in gathered for item in part]
    unreadable.sort(key=lambda item: item['path'])  # the same order however the samples were sharded
    elapsed = time.perf_counter() - start
    top1_hits, topk_hits, loss_sum, count = totals.tolist()
    count = int(count)
    # top-k is named for the k measured: with fewer than 5 classes 'top5' would claim a number that cannot exist
    topk = {f'top{maxk}': 100.0 * topk_hits / count if count else float('nan')} if maxk > 1 else {}
    return {
        'top1': 100.0 * top1_hits / count if count else float('nan'),
        **topk,
        'topk': maxk,
        'loss': loss_sum / count if count else float('nan'),
        'num_images': count,
        'num_unreadable': len(unreadable),
        'unreadable': unreadable,
        'images_per_second': count / elapsed if elapsed > 0 else float('nan'),
        'input_size': list(data_config['input_size']),
        'crop_pct': data_config['crop_pct'],
        'interpolation': data_config['interpolation'],
        'batch_size': batch_size,
        'world_size': context.world_size,
        'device': str(context.device),
        'channels_last': channels_last,
        'amp': amp,
    }
