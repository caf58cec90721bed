"""`timm-hrnet validate`: ImageNet-style top-1/top-5 evaluation (`timm_hrnet.tasks.classification_evaluation`),
single process or sharded under `torchrun`."""

from __future__ import annotations

import argparse
import os
import sys

from timm_hrnet.outputs import check_writable, write_json
from timm_hrnet.tasks.classification_evaluation import evaluate_classifier, read_samples
from timm_hrnet.tools.cli_common import (
    CliError,
    crop_fraction,
    device_or_fail,
    image_size,
    load_model_or_fail,
    non_negative_int,
    positive_int,
)

__all__ = ['add_arguments', 'run']


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
    device_or_fail(args.device)  # a bad --device is named as the flag, before the data and weights are read
    samples = read_samples(args.data_dir, args.split_file)
    if args.results_file:
        check_writable(args.results_file)  # before the evaluation's minutes
    model = load_model_or_fail(args.model, args.checkpoint, args.allow_http)
    try:
        results = evaluate_classifier(
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
        write_json(args.results_file, results)
    return 0
