"""`timm-hrnet evaluate-pose` (COCO keypoint AP) and `timm-hrnet evaluate-seg` (mIoU), single process or sharded
under `torchrun --nproc_per_node N -m timm_hrnet evaluate-...`; rank 0 prints, every rank computes the same numbers.

The protocols are `timm_hrnet.tasks.pose_evaluation` and `timm_hrnet.tasks.seg_evaluation`; docs/evaluation.md
says how to reproduce the published numbers with them.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from typing import Any

from timm_hrnet.distributed import process_group
from timm_hrnet.outputs import check_not_an_input, check_writable
from timm_hrnet.tasks.datasets import SEG_DATASETS
from timm_hrnet.tasks.label_maps import LABEL_FORMATS
from timm_hrnet.tasks.landmark_evaluation import NME_NORMALISATION, evaluate_landmarks
from timm_hrnet.tasks.pose import create_pose_model
from timm_hrnet.tasks.pose_evaluation import evaluate_pose
from timm_hrnet.tasks.seg_evaluation import evaluate_seg
from timm_hrnet.tasks.segmentation import create_seg_model
from timm_hrnet.tools.cli_common import (
    CliError,
    HelpFormatter,
    add_codec_argument,
    checkpoint_file,
    device_or_fail,
    error_message,
    flat_scales,
    positive_int,
    print_json,
    scale_list,
)
from timm_hrnet.tools.task_cli import _boolean, _size_hw

__all__ = ['add_pose_parser', 'add_seg_parser', 'run_pose', 'run_seg', 'GT_BOXES_WARNING']

GT_BOXES_WARNING = ('WARNING: GROUND-TRUTH PERSON BOXES. These numbers are NOT comparable with published COCO AP, '
                    'which is measured on detector boxes (--detections).')


def _sigmas(text: str) -> list[float]:
    """argparse type: OKS sigmas as 0.026,0.025,... (one per keypoint; also space-separated through nargs)."""
    try:
        values = [float(part) for part in text.split(',') if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f'expected numbers such as 0.026,0.025, got {text!r}') from error
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f'OKS sigmas must be positive numbers, got {text!r}')
    return values


def _common(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument('--checkpoint', required=True,
                        help=f'{what} checkpoint (.pth or .safetensors), a path or an https URL')
    parser.add_argument('--allow-http', action='store_true', help='accept a plain http:// checkpoint URL')
    parser.add_argument('--device', help="default: cuda (this rank's GPU under torchrun) when available, else cpu")
    parser.add_argument('--json', action='store_true', help='print the metrics as JSON instead of a table')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def add_pose_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `evaluate-pose` subcommand."""
    parser = subparsers.add_parser(
        'evaluate-pose', help='COCO keypoint AP of a pose checkpoint (works under torchrun)',
        formatter_class=HelpFormatter,
        description='COCO keypoint AP / AR of a top-down pose checkpoint, by the official HRNet protocol (detector '
                    'boxes, flip test, rescoring, OKS-NMS, pycocotools COCOeval).')
    _common(parser, 'pose')
    parser.add_argument('--annotations', required=True, help='COCO keypoint annotation file (person_keypoints_*.json)')
    parser.add_argument('--images', required=True, help='folder holding the images named in the annotation file')
    boxes = parser.add_mutually_exclusive_group(required=True)
    boxes.add_argument('--detections', help='COCO detection results file of the person boxes (as published)')
    boxes.add_argument('--gt-boxes', action='store_true',
                       help='use the annotated person boxes (not comparable with published numbers)')
    parser.add_argument('--results', help='write the keypoint results (COCO server format) here')
    parser.add_argument('--input-size', type=_size_hw, metavar='HxW',
                        help='crop size of the model; default: from the checkpoint file name, else 256x192')
    add_codec_argument(parser, "what the checkpoint says (mmpose's dark / udp file names or meta config, a "
                               "config.json beside it), else its layout's plain rule; a contradiction is an error")
    parser.add_argument('--no-flip', action='store_true', help='skip the flip test')
    parser.add_argument('--batch-size', type=positive_int, default=32, help='person crops per forward pass')
    parser.add_argument('--box-thr', type=float, default=0.0, help='keep detections scoring at least this')
    parser.add_argument('--keypoint-set', metavar='FILE',
                        help='JSON / YAML keypoint set (keypoints, flip_pairs, sigmas, ...; the format training '
                             "reads); default: the model's own (config.json beside the checkpoint; COCO's for COCO "
                             "names), else the annotation file's keypoint category")
    parser.add_argument('--sigmas', type=_sigmas, nargs='+', metavar='S',
                        help="OKS sigmas, one per keypoint, e.g. 0.026,0.025,...; default: the keypoint set's")
    parser.add_argument('--metric', choices=('ap', 'nme', 'pck'), default='ap',
                        help='ap: COCO keypoint AP; nme: face landmarks (WFLW / 300W / COFW inter-ocular, AFLW box '
                             'size); pck: hand landmarks (PCK@0.2, AUC, EPE); nme and pck score the annotated boxes '
                             '(--gt-boxes)')
    parser.set_defaults(handler=run_pose)
    return parser


def add_seg_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `evaluate-seg` subcommand."""
    parser = subparsers.add_parser(
        'evaluate-seg', help='mIoU of a segmentation checkpoint (works under torchrun)', formatter_class=HelpFormatter,
        description='Per-class IoU, mIoU and pixel accuracy of a segmentation checkpoint on images with label maps '
                    '(Cityscapes layout or folders matched by file name).')
    _common(parser, 'segmentation')
    parser.add_argument('--images', required=True, help='image folder (Cityscapes: leftImg8bit/<split>)')
    parser.add_argument('--labels', required=True, help='label folder (Cityscapes: gtFine/<split>)')
    parser.add_argument('--label-format', choices=LABEL_FORMATS, default='auto',
                        help='cityscapes: *_gtFine_labelIds.png mapped to the 19 train ids; index: pixel values are '
                             'classes; palette: RGB colours of the dataset palette; auto: by layout and image mode')
    parser.add_argument('--scales', type=scale_list, nargs='+', default=[[1.0]], metavar='S',
                        help='multi-scale test, e.g. 0.5,1.0,1.5')
    parser.add_argument('--flip', action='store_true', help='average with the mirrored image')
    parser.add_argument('--window', type=_size_hw, metavar='HxW', help='sliding-window inference')
    parser.add_argument('--dataset', choices=sorted(SEG_DATASETS), help='class names and palette; default: by count')
    parser.add_argument('--align-corners', type=_boolean, metavar='{true,false}',
                        help="the training config's MODEL.ALIGN_CORNERS; default: known for the released class counts")
    parser.add_argument('--ignore-index', type=int, default=255, help='label value that is not evaluated')
    parser.add_argument('--reduce-zero-label', action='store_true',
                        help='label 0 is "other" (ignored) and k is class k-1 (ADE20K, PASCAL-Context 59)')
    parser.set_defaults(handler=run_seg)
    return parser


def _json(metrics: dict[str, Any], leave_out: str) -> str:
    """Strict JSON: NaN (a class absent from labels and predictions) becomes null."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value
    return json.dumps({k: clean(v) for k, v in metrics.items() if k != leave_out}, indent=2, allow_nan=False)


def _load(factory: Callable[..., Any], args: argparse.Namespace, device: Any, **kwargs: Any) -> Any:
    path = checkpoint_file(args.checkpoint, args.allow_http).path
    try:
        return factory(path, device=device, **kwargs)
    except ValueError as error:
        raise CliError(f'cannot load {args.checkpoint}: {error}') from error


def _run_distributed(args: argparse.Namespace, evaluate: Callable[[Any], dict[str, Any]]) -> dict[str, Any] | None:
    """`evaluate(device)` in this rank's process group; the metrics on rank 0, None on the others. Bad input and
    a missing pycocotools become one-line CliErrors."""
    try:
        with process_group(device_or_fail(args.device)) as context:
            metrics = evaluate(context.device)
    except (ValueError, ImportError) as error:
        raise CliError(error_message(error)) from error
    return metrics if context.is_main else None


def run_landmarks(args: argparse.Namespace) -> int:
    """`evaluate-pose --metric nme|pck`: a face or hand landmark model on its annotated boxes."""
    if args.detections or args.results:
        raise CliError(f'--metric {args.metric} scores the annotated boxes: use --gt-boxes, without --detections / '
                       '--results')

    def evaluate(device: Any) -> dict[str, Any]:
        model = _load(create_pose_model, args, device, input_size=args.input_size, codec=args.codec)
        face = model.keypoint_info is not None and model.keypoint_info.name in NME_NORMALISATION
        if face != (args.metric == 'nme'):
            what = model.keypoint_info.name if model.keypoint_info else f'{model.num_joints} joints'
            raise ValueError(f'{args.checkpoint} predicts {what}: --metric {args.metric} is for '
                             f'{"faces (WFLW, 300W, COFW, AFLW)" if args.metric == "nme" else "hands"}')
        return evaluate_landmarks(model, args.annotations, args.images, flip_test=False if args.no_flip else None,
                                  batch_size=args.batch_size)

    metrics = _run_distributed(args, evaluate)
    if metrics is None:
        return 0
    if args.json:
        print_json(json.dumps(metrics, indent=2))
        return 0
    print(f'{metrics["num_images"]} images, {metrics["num_instances"]} annotated boxes, keypoint set '
          f'{metrics["keypoint_set"]}, codec {metrics["codec"]}, {metrics["images_per_second"]:.1f} images/s')
    for name in ('NME', 'PCK', 'AUC', 'EPE'):
        if name in metrics:
            print(f'{name} {metrics[name]:.4f}')
    return 0


def run_pose(args: argparse.Namespace) -> int:
    """Evaluate, print the AP table (rank 0) and write the results file."""
    if args.metric != 'ap':
        return run_landmarks(args)
    sigmas = None if args.sigmas is None else [s for group in args.sigmas for s in group]
    if args.results:  # before the evaluation's minutes: not over an input, and writable
        check_not_an_input(args.results, [p for p in (args.annotations, args.detections, args.checkpoint) if p])
        check_writable(args.results)

    def evaluate(device: Any) -> dict[str, Any]:
        model = _load(create_pose_model, args, device, input_size=args.input_size, codec=args.codec)
        return evaluate_pose(
            model, args.annotations, args.images, args.detections, gt_boxes=args.gt_boxes,
            box_score_thr=args.box_thr, flip_test=not args.no_flip, batch_size=args.batch_size,
            keypoint_set=args.keypoint_set, keypoint_sigmas=sigmas, results_file=args.results,
            progress=not args.no_progress)

    metrics = _run_distributed(args, evaluate)
    if metrics is None:
        return 0
    if args.gt_boxes:
        print(GT_BOXES_WARNING, file=sys.stderr)
    if args.json:
        print_json(_json(metrics, 'summary'))
        return 0
    boxes = 'ground-truth boxes' if args.gt_boxes else f'detections from {args.detections}'
    print(f'{metrics["num_images"]} images, {metrics["num_boxes"]} person boxes ({boxes}), '
          f'{metrics["num_results"]} results after OKS-NMS, flip test {"on" if metrics["flip_test"] else "off"}, '
          f'keypoint set {metrics["keypoint_set"]}, codec {metrics["codec"]}, {metrics["images_per_second"]:.1f} '
          'images/s')
    names = ('AP', 'AP50', 'AP75', 'APm', 'APl', 'AR')
    rows = metrics.get('parts') or {'': metrics}  # COCO-WholeBody: a row per part
    width = max(len(part) for part in rows)
    print(' ' * width + '  '.join(f'{name:>6}' for name in names))
    # COCOeval gives -1 where an area range has no people (e.g. no medium-size ones): not a score
    for part, stats in rows.items():
        print(f'{part:<{width}}' + '  '.join(f'{100 * stats[name]:6.1f}' if stats[name] >= 0 else f'{"n/a":>6}'
                                             for name in names))
    if args.gt_boxes:
        print(GT_BOXES_WARNING)
    if args.results:
        print(f'wrote {args.results}')
    return 0


def run_seg(args: argparse.Namespace) -> int:
    """Evaluate and print the per-class IoU table, mIoU and aAcc (rank 0)."""
    scales = flat_scales(args.scales)

    def evaluate(device: Any) -> dict[str, Any]:
        model = _load(create_seg_model, args, device, align_corners=args.align_corners, dataset=args.dataset)
        return evaluate_seg(
            model, args.images, args.labels, label_format=args.label_format, scales=scales, flip=args.flip,
            window=args.window, ignore_index=args.ignore_index, reduce_zero_label=args.reduce_zero_label,
            progress=not args.no_progress)

    metrics = _run_distributed(args, evaluate)
    if metrics is None:
        return 0
    if args.json:
        print_json(_json(metrics, 'confusion_matrix'))
        return 0
    print(f'{metrics["num_images"]} images ({metrics["label_format"]} labels), scales {scales}, flip '
          f'{"on" if args.flip else "off"}, {metrics["images_per_second"]:.2f} images/s')
    width = max(len(name) for name in metrics['per_class_iou'])
    print(f'{"class":<{width}}     IoU     Acc')
    for (name, iou), acc in zip(metrics['per_class_iou'].items(), metrics['per_class_acc'].values()):
        print(f'{name:<{width}}  {100 * iou:6.2f}  {100 * acc:6.2f}')
    print(f'mIoU {100 * metrics["mIoU"]:.2f}  aAcc {100 * metrics["aAcc"]:.2f}  mAcc {100 * metrics["mAcc"]:.2f}')
    return 0
