"""`timm-hrnet validate`: ImageNet-style top-1/top-5 evaluation, single process or sharded under `torchrun`.

Under `torchrun` every rank evaluates the samples `rank::world_size` (no padding, so no sample is counted twice)
and the per-rank sums of correct predictions, loss and image counts are all-reduced, which makes the numbers
identical to a single-process run. No DistributedDataParallel wrapper is needed because nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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

from timm_hrnet.classification import UnreadableImageError, load_rgb_image
from timm_hrnet.distributed import DistContext, process_group
from timm_hrnet.tools.cli_common import (
    CliError,
    amp_autocast,
    crop_fraction,
    device_or_fail,
    image_size,
    load_model_or_fail,
    non_negative_int,
    positive_int,
)

__all__ = ['EvalImageDataset', 'add_arguments', 'evaluate', 'read_samples', 'run']


def read_samples(data_dir: str | Path, split_file: str | Path | None = None) -> list[tuple[str, int]]:
    """`(path, label)` pairs: from an annotation file of `relative/path label` lines when given, else from
    class sub-folders numbered in sorted order exactly as torchvision's ImageFolder numbers them."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CliError(f'data directory not found: {data_dir}')
    if split_file is None:
        try:
            _, class_to_idx = find_classes(data_dir)
            return make_dataset(data_dir, class_to_idx, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as error:
            raise CliError(f'{error} (for a flat folder of images pass --split-file)') from error
    split_file = Path(split_file)
    if not split_file.is_file():
        raise CliError(f'split file not found: {split_file}')
    samples = []
    for line_number, line in enumerate(split_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        relative_path, _, label = line.strip().rpartition(' ')
        if not relative_path or not label.isdigit():
            raise CliError(f'{split_file}:{line_number}: expected "relative/path label", got {line!r}')
        samples.append((str(data_dir / relative_path), int(label)))
    if not samples:
        raise CliError(f'split file {split_file} lists no images')
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
            return self.transform(load_rgb_image(path)), label, index, ''
        except UnreadableImageError as error:
            return torch.zeros(self.input_size), label, index, error.reason


@torch.inference_mode()
def evaluate(
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
    with process_group(device_or_fail(device)) as context:
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
        raise CliError(f'the data has label {largest_label} but the model has only {num_classes} classes')
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `timm-hrnet validate`."""
    parser.add_argument('--data-dir', required=True, help='class sub-folders, or a flat folder with --split-file')
    parser.add_argument('--split-file', help='annotation file of "relative/path label" lines (mmpretrain ImageNet val)')
    parser.add_argument('--model', required=True,
                        help='timm name (tag optional), hf-hub:ORG/REPO, local-dir:DIR or mmpretrain HRNet name')
    parser.add_argument('--checkpoint', help='weights in any layout the converter reads, a path or an https URL '
                        '(downloaded once into the cache); default: the published weights')
    parser.add_argument('--allow-http', action='store_true', help='allow a plain http:// --checkpoint URL')
    parser.add_argument('--batch-size', type=positive_int, default=64, help='images per batch (per process)')
    parser.add_argument('--workers', type=non_negative_int, default=min(4, os.cpu_count() or 1),
                        help='data-loading processes')
    parser.add_argument('--img-size', type=image_size, help='square input size; default: from the pretrained cfg')
    parser.add_argument('--crop-pct', type=crop_fraction,
                        help='center-crop fraction in (0, 1]; default: from the pretrained cfg')
    parser.add_argument('--channels-last', action='store_true', help='run in channels_last memory format')
    parser.add_argument('--amp', action='store_true', help='autocast: float16 on CUDA, bfloat16 on CPU')
    parser.add_argument('--device', help='default: cuda (this rank\'s GPU under torchrun) when available, else cpu')
    parser.add_argument('--results-file', help='write the results as JSON here')
    parser.add_argument('--strict', action='store_true', help='fail (exit 1) when any image cannot be read')


def run(args: argparse.Namespace) -> int:
    """Run `timm-hrnet validate`; only rank 0 prints and writes the results file."""
    samples = read_samples(args.data_dir, args.split_file)
    model = load_model_or_fail(args.model, args.checkpoint, args.allow_http)
    try:
        results = evaluate(
            model, samples, img_size=args.img_size, crop_pct=args.crop_pct, batch_size=args.batch_size,
            workers=args.workers, channels_last=args.channels_last, amp=args.amp, device=args.device,
        )
    except ValueError as error:  # the model refusing this input
        raise CliError(f'{args.model} cannot run on these inputs: {error}') from error
    if int(os.environ.get('RANK', '0')) != 0:
        return 1 if args.strict and results['num_unreadable'] else 0
    results = {'model': args.model, 'checkpoint': args.checkpoint, 'data_dir': args.data_dir,
               'split_file': args.split_file, **results}
    for item in results['unreadable']:
        print(f'skipped unreadable image {item["path"]}: {item["reason"]}', file=sys.stderr)
    k = results['topk']
    topk = f'  top-{k} {results[f"top{k}"]:.3f}%' if k > 1 else ''
    print(f'{args.model}: top-1 {results["top1"]:.3f}%{topk}  loss {results["loss"]:.4f}  '
          f'{results["num_images"]} images ({results["num_unreadable"]} unreadable)  '
          f'{results["images_per_second"]:.1f} images/s')
    if args.strict and results['num_unreadable']:
        print(f'error: {results["num_unreadable"]} unreadable images (--strict)', file=sys.stderr)
        return 1
    if args.results_file:
        Path(args.results_file).write_text(json.dumps(results, indent=2) + '\n')
    return 0
