"""Evaluation throughput: images/s of `evaluate_pose` (HRNet-W32 pose at 256x192, with and without the flip test)
and `evaluate_seg` (HRNetV2-W48 segmentation, single scale) on this machine, as `timm-hrnet evaluate-pose` /
`evaluate-seg` run them: reading, cropping, the network, decoding, rescoring, OKS-NMS and COCOeval (pose), label
maps and the confusion matrix (segmentation).

The data are made by the script in a temporary folder: random-noise JPEGs with person boxes and COCO keypoints plus
a detection file (jittered boxes) for pose, PNG images with index label maps for segmentation. The models have
random weights (the numbers do not depend on them). Each measurement is the `images_per_second` the evaluation
returns (its own timer: from the first image read to the last result, COCOeval and file writing left out); with
`--rounds N` the median of N runs after one untimed warm-up run on the same data.

    python benchmarks/bench_evaluation.py                                  # CPU, the sets of docs/evaluation.md
    python benchmarks/bench_evaluation.py --pose-images 2 --seg-images 1 --seg-size 256x512 --rounds 1   # smoke
    python benchmarks/bench_evaluation.py --device cuda --pose-images 200 --seg-images 20 --rounds 3

Needs pycocotools (`pip install "timm-hrnet[eval]"`) for the pose runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_common import machine_line
from PIL import Image

from timm_hrnet.tasks.datasets import COCO_KEYPOINTS
from timm_hrnet.tasks.pose import HRNetPose
from timm_hrnet.tasks.pose_evaluation import evaluate_pose
from timm_hrnet.tasks.seg_evaluation import evaluate_seg
from timm_hrnet.tasks.segmentation import HRNetSeg
from timm_hrnet.variants import resolve_variant

RUNS = ('pose-flip', 'pose-noflip', 'seg')


def size_hw(text: str) -> tuple[int, int]:
    """argparse type: HEIGHTxWIDTH."""
    try:
        height, width = (int(part) for part in text.lower().split('x'))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f'expected HEIGHTxWIDTH such as 512x1024, got {text!r}') from error
    if min(height, width) < 32:
        raise argparse.ArgumentTypeError(f'height and width must be at least 32, got {text!r}')
    return height, width


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', nargs='+', choices=RUNS, default=list(RUNS))
    parser.add_argument('--pose-images', type=int, default=16, help='JPEGs in the pose set')
    parser.add_argument('--pose-size', type=size_hw, default=(480, 640), metavar='HxW', help='pose image size')
    parser.add_argument('--people', type=int, default=2, help='person boxes per pose image')
    parser.add_argument('--seg-images', type=int, default=4, help='images (with label maps) in the seg set')
    parser.add_argument('--seg-size', type=size_hw, default=(512, 1024), metavar='HxW', help='seg image size')
    parser.add_argument('--batch-size', type=int, default=32, help='pose crops per forward pass')
    parser.add_argument('--rounds', type=int, default=1, help='timed runs per measurement (median reported)')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--threads', type=int, help='torch.set_num_threads (default: torch default)')
    args = parser.parse_args()
    if min(args.pose_images, args.people, args.seg_images, args.batch_size, args.rounds) < 1:
        parser.error('--pose-images, --people, --seg-images, --batch-size and --rounds must be positive')
    return args


def make_pose_set(root: Path, images: int, size: tuple[int, int], people: int) -> dict[str, Path]:
    """Random JPEGs, `people` annotated persons each (COCO's 17 keypoints inside the box) and a detection file with
    their boxes jittered, as COCO's person_keypoints / detection results files."""
    rng = np.random.default_rng(0)
    height, width = size
    folder = root / 'pose_images'
    folder.mkdir()
    entries, annotations, detections = [], [], []
    for image_id in range(1, images + 1):
        name = f'{image_id:012d}.jpg'
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(folder / name, quality=90)
        entries.append(dict(id=image_id, file_name=name, width=width, height=height))
        for _ in range(people):
            w, h = rng.uniform(0.2, 0.5) * width, rng.uniform(0.4, 0.9) * height
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            points = np.stack([x + rng.uniform(0, w, 17), y + rng.uniform(0, h, 17), np.full(17, 2.0)], 1)
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=1, bbox=[x, y, w, h],
                                    area=w * h * 0.6, iscrowd=0, keypoints=points.ravel().tolist(), num_keypoints=17))
            jitter = rng.normal(0, 3, 4)
            detections.append(dict(image_id=image_id, category_id=1, score=float(rng.uniform(0.5, 1.0)),
                                   bbox=[x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]]))
    category = dict(id=1, name='person', supercategory='person', keypoints=list(COCO_KEYPOINTS.keypoint_names),
                    skeleton=[[a + 1, b + 1] for a, b in COCO_KEYPOINTS.skeleton])
    ann_file, det_file = root / 'person_keypoints.json', root / 'detections.json'
    ann_file.write_text(json.dumps(dict(images=entries, annotations=annotations, categories=[category])))
    det_file.write_text(json.dumps(detections))
    return dict(ann=ann_file, images=folder, det=det_file)


def make_seg_set(root: Path, images: int, size: tuple[int, int], num_classes: int) -> dict[str, Path]:
    """Random PNG images and 8-bit index label maps of blocks of classes, matched by file name."""
    rng = np.random.default_rng(1)
    height, width = size
    image_dir, label_dir = root / 'seg_images', root / 'seg_labels'
    image_dir.mkdir()
    label_dir.mkdir()
    for index in range(images):
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(image_dir / f'{index}.png')
        blocks = rng.integers(0, num_classes, (max(1, height // 64), max(1, width // 64)), dtype=np.uint8)
        labels = np.kron(blocks, np.ones((64, 64), dtype=np.uint8))[:height, :width]
        labels = np.pad(labels, ((0, height - labels.shape[0]), (0, width - labels.shape[1])), constant_values=255)
        Image.fromarray(labels).save(label_dir / f'{index}.png')
    return dict(images=image_dir, labels=label_dir)


def median_run(run: Callable[[], dict[str, Any]], rounds: int) -> dict[str, Any]:
    """One untimed warm-up run, then `rounds` runs; the metrics of the one with the median images/s."""
    run()
    results = sorted((run() for _ in range(rounds)), key=lambda metrics: metrics['images_per_second'])
    return results[len(results) // 2]


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f'torch {torch.__version__} on {device} ({machine_line(device)}), random weights, '
          f'{args.rounds} timed round(s)')
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix='bench_evaluation_') as folder, torch.inference_mode():
        root = Path(folder)
        pose_runs = [run for run in args.runs if run.startswith('pose')]
        if pose_runs:
            data = make_pose_set(root, args.pose_images, args.pose_size, args.people)
            spec = dataclasses.replace(resolve_variant('hrnet_w32'), multi_scale_output=False)
            pose = HRNetPose(spec, 17, input_size=(256, 192)).to(device).eval()
            described = (f'{args.pose_images} JPEGs {args.pose_size[1]}x{args.pose_size[0]}, '
                         f'{args.people} boxes each')
            for run in pose_runs:
                flip = run == 'pose-flip'
                metrics = median_run(lambda flip=flip: evaluate_pose(
                    pose, data['ann'], data['images'], data['det'], flip_test=flip, batch_size=args.batch_size,
                    progress=False), args.rounds)
                rows.append((f'evaluate-pose, W32 256x192, {"flip test" if flip else "no flip"}, batch '
                             f'{args.batch_size}', described, metrics['images_per_second'],
                             metrics['boxes_per_second']))
            del pose
        if 'seg' in args.runs:
            data = make_seg_set(root, args.seg_images, args.seg_size, 19)
            spec = dataclasses.replace(resolve_variant('hrnet_w48'), upsample='bilinear', align_corners=False)
            seg = HRNetSeg(spec, 19).to(device).eval()
            metrics = median_run(lambda: evaluate_seg(seg, data['images'], data['labels'], label_format='index',
                                                      progress=False), args.rounds)
            rows.append(('evaluate-seg, W48, single scale',
                         f'{args.seg_images} PNGs {args.seg_size[1]}x{args.seg_size[0]} with label maps',
                         metrics['images_per_second'], None))
    width = max(len(row[0]) for row in rows)
    set_width = max(len(row[1]) for row in rows)
    print(f'{"what":<{width}}  {"set":<{set_width}}  {"images/s":>9}  {"boxes/s":>8}')
    for what, described, images_per_second, boxes_per_second in rows:
        boxes = f'{boxes_per_second:>8.2f}' if boxes_per_second is not None else f'{"-":>8}'
        print(f'{what:<{width}}  {described:<{set_width}}  {images_per_second:>9.2f}  {boxes}')


if __name__ == '__main__':
    main()
