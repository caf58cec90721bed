"""The `timm-hrnet pose` and `timm-hrnet segment` subcommands: run an official pose / segmentation checkpoint on
one image, print the result (or JSON with `--json`) and draw it with `--out`.

`add_pose_parser(subparsers)` / `add_segment_parser(subparsers)` add the subcommands to an argparse subparsers
object and store `run_pose` / `run_segment` as `handler`; user errors raise `CliError` (one line, exit code 2).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from timm_hrnet.inference import UnreadableImageError
from timm_hrnet.pose import create_pose_model
from timm_hrnet.segmentation import create_seg_model
from timm_hrnet.task_data import SEG_DATASETS
from timm_hrnet.task_images import draw_pose, overlay_labels, to_pil
from timm_hrnet.tools.cli_common import CliError, HelpFormatter, checkpoint_file, device_or_fail

__all__ = ['add_pose_parser', 'add_segment_parser', 'run_pose', 'run_segment']


def _size_hw(text: str) -> tuple[int, int]:
    """argparse type: HEIGHTxWIDTH, each at least 32 (one pixel on HRNet's stride-32 branch)."""
    parts = text.lower().split('x')
    try:
        height, width = (int(p) for p in parts)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f'expected HEIGHTxWIDTH such as 256x192, got {text!r}') from error
    if min(height, width) < 32:
        raise argparse.ArgumentTypeError(f'height and width must be at least 32, got {text!r}')
    return height, width


def _boolean(text: str) -> bool:
    value = text.lower()
    if value not in ('true', 'false'):
        raise argparse.ArgumentTypeError(f'expected true or false, got {text!r}')
    return value == 'true'


def _common_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument('image', metavar='IMAGE', help='image file')
    parser.add_argument('--checkpoint', required=True,
                        help=f'official {what} checkpoint (.pth or .safetensors), a path or an https URL')
    parser.add_argument('--allow-http', action='store_true', help='accept a plain http:// checkpoint URL')
    parser.add_argument('--out', help=f'write the image with the {what} result drawn on it (format from the suffix)')
    parser.add_argument('--json', action='store_true', help='print JSON instead of text')
    parser.add_argument('--device', help='default: cuda when available, else cpu')


def add_pose_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `pose` subcommand."""
    parser = subparsers.add_parser(
        'pose', help='human keypoints with an official pose_hrnet checkpoint', formatter_class=HelpFormatter,
        description='Keypoints of the people in an image, one per person box (default: the whole image).')
    _common_arguments(parser, 'pose')
    parser.add_argument('--box', nargs=4, type=float, action='append', metavar=('X', 'Y', 'W', 'H'),
                        help='a person box in pixels (repeat for several people); default: the whole image')
    parser.add_argument('--input-size', type=_size_hw, metavar='HxW',
                        help='crop size of the model; default: from the checkpoint file name, else 256x192')
    parser.add_argument('--no-flip', action='store_true', help='skip the flip test (twice as fast)')
    parser.add_argument('--threshold', type=float, default=0.3, help='keypoints scoring lower are not drawn')
    parser.set_defaults(handler=run_pose)
    return parser


def add_segment_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `segment` subcommand."""
    parser = subparsers.add_parser(
        'segment', help='semantic segmentation with an official seg_hrnet checkpoint', formatter_class=HelpFormatter,
        description='A label per pixel with an official seg_hrnet checkpoint.')
    _common_arguments(parser, 'segmentation')
    parser.add_argument('--align-corners', type=_boolean, metavar='{true,false}',
                        help="the training config's MODEL.ALIGN_CORNERS; default: known for the released class "
                             'counts (19, 20, 59, 60: false; 150, 171: true), required otherwise')
    parser.add_argument('--dataset', choices=sorted(SEG_DATASETS), help='class names and colours; default: by count')
    parser.add_argument('--alpha', type=float, default=0.5, help='mask opacity in --out (1: the mask alone)')
    parser.add_argument('--flip', action='store_true', help='average with the mirrored image')
    parser.add_argument('--scales', type=float, nargs='+', default=[1.0], help='multi-scale test, e.g. 0.75 1 1.25')
    parser.add_argument('--window', type=_size_hw, metavar='HxW', help='sliding-window inference for large images')
    parser.set_defaults(handler=run_segment)
    return parser


def _load(factory: Any, args: argparse.Namespace, **kwargs: Any) -> Any:
    path = checkpoint_file(args.checkpoint, args.allow_http).path
    try:
        return factory(path, device=device_or_fail(args.device), **kwargs)
    except ValueError as error:
        raise CliError(f'cannot load {args.checkpoint}: {error}') from error


def _predict(model: Any, args: argparse.Namespace, **kwargs: Any) -> dict[str, Any]:
    try:
        return model.predict(args.image, **kwargs)
    except UnreadableImageError as error:
        raise CliError(str(error)) from error
    except ValueError as error:
        raise CliError(f'cannot run on {args.image}: {error}') from error


def _save(image: Any, path: str) -> None:
    try:
        image.save(path)
    except (OSError, ValueError) as error:
        raise CliError(f'cannot write {path}: {error}') from error


def run_pose(args: argparse.Namespace) -> int:
    """Print (and draw) the keypoints of each person box."""
    if not Path(args.image).is_file():
        raise CliError(f'image not found: {args.image}')
    model = _load(create_pose_model, args, input_size=args.input_size)
    result = _predict(model, args, boxes=args.box, flip_test=False if args.no_flip else None)
    names = result['keypoint_names']
    people = [
        dict(box=[round(v, 2) for v in box],
             keypoints=[dict(name=name, x=round(x, 2), y=round(y, 2), score=round(score, 4))
                        for name, (x, y), score in zip(names, points, scores)])
        for box, points, scores in zip(result['boxes'].tolist(), result['keypoints'].tolist(),
                                       result['scores'].tolist())
    ]
    if args.out:
        skeleton = model.keypoint_info.skeleton if model.keypoint_info else ()
        _save(draw_pose(to_pil(args.image), result['keypoints'], result['scores'], skeleton, args.threshold), args.out)
    if args.json:
        print(json.dumps(dict(image=args.image, checkpoint=args.checkpoint, input_size=list(model.input_size),
                              people=people, out=args.out), indent=2))
        return 0
    print(f'{args.image}: {len(people)} person box(es), {model.num_joints} keypoints, '
          f'input {model.input_size[0]}x{model.input_size[1]}')
    for index, person in enumerate(people, start=1):
        print(f'person {index} (box x={person["box"][0]} y={person["box"][1]} w={person["box"][2]} '
              f'h={person["box"][3]}):')
        for point in person['keypoints']:
            print(f'  {point["name"]:<16} x={point["x"]:8.1f}  y={point["y"]:8.1f}  score={point["score"]:.3f}')
    if args.out:
        print(f'wrote {args.out}')
    return 0


def run_segment(args: argparse.Namespace) -> int:
    """Print the share of each predicted class (and draw the colour mask)."""
    if not Path(args.image).is_file():
        raise CliError(f'image not found: {args.image}')
    if not 0.0 <= args.alpha <= 1.0:
        raise CliError(f'--alpha must be in [0, 1], got {args.alpha}')
    if min(args.scales) <= 0:
        raise CliError(f'--scales must be positive, got {args.scales}')
    model = _load(create_seg_model, args, align_corners=args.align_corners, dataset=args.dataset)
    result = _predict(model, args, scales=args.scales, flip=args.flip, window=args.window)
    labels = result['labels']
    counts = torch.bincount(labels.flatten(), minlength=model.num_classes)
    classes = [
        dict(label=label, name=model.class_names[label], fraction=round(count / labels.numel(), 6))
        for label, count in sorted(enumerate(counts.tolist()), key=lambda item: -item[1]) if count
    ]
    if args.out:
        _save(overlay_labels(to_pil(args.image), labels, model.palette, args.alpha), args.out)
    if args.json:
        print(json.dumps(dict(image=args.image, checkpoint=args.checkpoint, size=list(labels.shape),
                              num_classes=model.num_classes, dataset=model.dataset.name if model.dataset else None,
                              align_corners=model.align_corners, classes=classes, out=args.out), indent=2))
        return 0
    dataset = f' ({model.dataset.name})' if model.dataset else ''
    print(f'{args.image}: {labels.shape[0]}x{labels.shape[1]}, {model.num_classes} classes{dataset}, '
          f'align_corners={model.align_corners}')
    for entry in classes:
        print(f'  {entry["name"]:<24} {100 * entry["fraction"]:6.2f} %')
    if args.out:
        print(f'wrote {args.out}')
    return 0
