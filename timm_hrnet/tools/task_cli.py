"""The `timm-hrnet pose` and `timm-hrnet segment` subcommands: run a pose / segmentation checkpoint on an image, a
folder of images or a video, print the result (or JSON with `--json`) and draw it with `--out`.

One image: `--out` names the picture to write. A folder or a video: `--out` names a directory that receives the
annotated images (one per input image, `<name>.png`) or the annotated video (`<stem>.mp4`), plus the results as JSON
per frame (`<name>.json` per image; `<stem>.jsonl` for a video, one line per frame).

`add_pose_parser(subparsers)` / `add_segment_parser(subparsers)` add the subcommands to an argparse subparsers
object and store `run_pose` / `run_segment` as `handler`; user errors raise `CliError` (one line, exit code 2).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from timm_hrnet.checkpoints import load_checkpoint_file
from timm_hrnet.images import UnreadableImageError, list_images, to_pil
from timm_hrnet.outputs import atomic_path, check_not_an_input, check_writable, write_atomic, write_json
from timm_hrnet.tasks.datasets import SEG_DATASETS
from timm_hrnet.tasks.detection import PersonDetector, person_detector
from timm_hrnet.tasks.drawing import draw_legend, draw_pose, overlay_labels
from timm_hrnet.tasks.media import Frame, UnreadableVideoError, is_video, read_frames, video_fps, write_video
from timm_hrnet.tasks.pipeline import pose_frames, segment_frames
from timm_hrnet.tasks.pose import HRNetPose, create_pose_model
from timm_hrnet.tasks.segmentation import HRNetSeg, create_seg_model
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
    parser.add_argument('image', metavar='SOURCE', help='an image file, a folder of images or a video file')
    parser.add_argument('--checkpoint', required=True,
                        help=f'{what} checkpoint (official or OpenMMLab; .pth or .safetensors), a path or an https URL')
    parser.add_argument('--allow-http', action='store_true', help='accept a plain http:// checkpoint URL')
    parser.add_argument('--out', help=f'one image: write it with the {what} result drawn on it (format from the '
                                      'suffix); a folder or video: a directory for the drawn images or video and the '
                                      'JSON per frame')
    parser.add_argument('--json', action='store_true', help='print JSON instead of text')
    parser.add_argument('--device', help='default: cuda when available, else cpu')


def add_pose_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `pose` subcommand."""
    parser = subparsers.add_parser(
        'pose', help="human keypoints with a pose checkpoint (official pose_hrnet or mmpose's top-down HRNet), or "
                     'face / hand landmarks (HRNetV2) in given boxes',
        formatter_class=HelpFormatter,
        description='Keypoints of the people in an image, a folder of images or a video, one per person box '
                    "(default: the whole image), with an official pose_hrnet or an mmpose top-down heatmap HRNet "
                    'checkpoint (e.g. td-hm_hrnet-w32_8xb64-210e_coco-256x192-*.pth); face and hand landmark models '
                    '(HRNet-Facial-Landmark-Detection, mmpose hrnetv2_w18_*) take the face / hand boxes (--box).')
    _common_arguments(parser, 'pose')
    parser.add_argument('--box', nargs=4, type=float, action='append', metavar=('X', 'Y', 'W', 'H'),
                        help='a person box in pixels (repeat for several people); default: the whole image')
    parser.add_argument('--input-size', type=_size_hw, metavar='HxW',
                        help='crop size of the model; default: from the checkpoint file name, else 256x192')
    add_codec_argument(parser, "what the checkpoint says (mmpose's dark / udp file names or meta config, a "
                               'config.json beside it), else its layout\'s plain rule; a contradiction is an error')
    parser.add_argument('--no-flip', action='store_true', help='skip the flip test (twice as fast)')
    parser.add_argument('--threshold', type=float, default=0.3, help='keypoints scoring lower are not drawn')
    parser.add_argument('--detector', metavar='NAME',
                        help='find the people with this torchvision detection model first, e.g. '
                             'fasterrcnn_resnet50_fpn_v2 (its COCO weights, downloaded once by torchvision)')
    parser.add_argument('--detector-weights', metavar='DEFAULT|none|FILE', default='DEFAULT',
                        help="the detector's weights: torchvision's default, none (random: for tests), or a state "
                             'dict file')
    parser.add_argument('--detector-threshold', type=float, default=0.5, help='person boxes scoring lower are dropped')
    parser.add_argument('--batch-size', type=positive_int, default=64, help='person crops per forward pass')
    parser.set_defaults(handler=run_pose)
    return parser


def add_segment_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `segment` subcommand."""
    parser = subparsers.add_parser(
        'segment', help="semantic segmentation with a segmentation checkpoint (official seg_hrnet or mmseg's "
                        'HRNet + FCNHead)', formatter_class=HelpFormatter,
        description='A label per pixel of an image, a folder of images or a video, with an official seg_hrnet or an '
                    'mmseg HRNet + FCNHead checkpoint (e.g. fcn_hr18_512x1024_40k_cityscapes_*.pth).')
    _common_arguments(parser, 'segmentation')
    parser.add_argument('--align-corners', type=_boolean, metavar='{true,false}',
                        help="the training config's MODEL.ALIGN_CORNERS; default: known for the released class "
                             'counts (19, 20, 59, 60: false; 150, 171: true), required otherwise')
    parser.add_argument('--dataset', choices=sorted(SEG_DATASETS), help='class names and colours; default: by count')
    parser.add_argument('--alpha', type=float, default=0.5, help='mask opacity in --out (1: the mask alone)')
    parser.add_argument('--flip', action='store_true', help='average with the mirrored image')
    parser.add_argument('--scales', type=scale_list, nargs='+', default=[[1.0]], metavar='S',
                        help='multi-scale test, e.g. 0.75,1,1.25 (or 0.75 1 1.25)')
    parser.add_argument('--window', type=_size_hw, metavar='HxW', help='sliding-window inference for large images')
    parser.add_argument('--no-progress', action='store_true',
                        help='no progress bar (shown on stderr for a single image run in several passes)')
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


def _save(image: Any, path: str | Path) -> None:
    """A drawn picture, written whole or not at all (format from the suffix, checked before the work)."""
    write_atomic(path, image.save)


def _check_outputs(args: argparse.Namespace) -> None:
    """Before any work: `--out` must not be (or, for a folder source, hold) an input, a picture needs a format
    from its suffix, and the outputs of one run must not share a name (x.jpg and x.png would both give x.png)."""
    if not args.out:
        return
    source, out = Path(args.image), Path(args.out)
    if source.is_dir():
        check_not_an_input(out, list_images(source), is_folder=True)
        by_name: dict[str, Path] = {}
        for image in list_images(source):
            if image.stem in by_name:
                raise CliError(f'{by_name[image.stem]} and {image} would both be drawn to {out / image.stem}.png '
                               '(and .json): rename one of them, or run them from separate folders')
            by_name[image.stem] = image
    elif is_video(source):
        check_not_an_input(out / f'{source.stem}.mp4', [source])
    else:
        check_not_an_input(out, [source])
        if out.suffix.lower() not in Image.registered_extensions():
            raise CliError(f'--out {out}: no image format for the suffix {out.suffix or "(none)"!r}; use .png or .jpg')
        check_writable(out)


def _person_detector(args: argparse.Namespace, device: torch.device) -> PersonDetector | None:
    if args.detector is None:
        return None
    if args.box:
        raise CliError('give --box or --detector, not both')
    weights = args.detector_weights
    from_file = weights not in ('DEFAULT', 'none')
    try:
        detector = person_detector(args.detector, None if from_file or weights == 'none' else weights,
                                   args.detector_threshold, device)
        if from_file:
            detector.model.load_state_dict(load_checkpoint_file(weights))
    except (OSError, RuntimeError, ValueError) as error:
        raise CliError(f'cannot build the detector {args.detector}: {error_message(error)}') from error
    return detector


def _people(result: dict[str, Any]) -> list[dict[str, Any]]:
    names = result['keypoint_names']
    return [
        dict(box=[round(v, 2) for v in box], box_score=round(box_score, 4),
             keypoints=[dict(name=name, x=round(x, 2), y=round(y, 2), score=round(score, 4))
                        for name, (x, y), score in zip(names, points, scores)])
        for box, box_score, points, scores in zip(result['boxes'].tolist(), result['box_scores'].tolist(),
                                                  result['keypoints'].tolist(), result['scores'].tolist())
    ]


def _check_source(source: str) -> None:
    if not Path(source).exists():
        raise CliError(f'{"video" if is_video(source) else "image"} not found: {source}')


def run_pose(args: argparse.Namespace) -> int:
    """Print (and draw) the keypoints of each person."""
    _check_source(args.image)
    _check_outputs(args)
    model = _load(create_pose_model, args, input_size=args.input_size, codec=args.codec)
    detector = _person_detector(args, next(model.parameters()).device)
    flip = False if args.no_flip else None
    if Path(args.image).is_dir() or is_video(args.image):
        frames = _SourceFrames(Path(args.image))
        results = pose_frames(model, frames, detector, args.box, flip, crops_per_batch=args.batch_size)
        return _run_frames(args, frames, results, lambda frame, result: dict(people=_people(result)),
                           lambda frame, result: _draw_people(model, frame.image, result, args.threshold))
    result = _predict(model, args, boxes=args.box, flip_test=flip, detector=detector)
    people = _people(result)
    if args.out:
        _save(_draw_people(model, to_pil(args.image), result, args.threshold), args.out)
    if args.json:
        print_json(json.dumps(dict(image=args.image, checkpoint=args.checkpoint, input_size=list(model.input_size),
                                   codec=model.codec.spec, people=people, out=args.out), indent=2))
        return 0
    print(f'{args.image}: {len(people)} person box(es), {model.num_joints} keypoints, '
          f'input {model.input_size[0]}x{model.input_size[1]}, codec {model.codec.spec}')
    for index, person in enumerate(people, start=1):
        print(f'person {index} (box x={person["box"][0]} y={person["box"][1]} w={person["box"][2]} '
              f'h={person["box"][3]}):')
        for point in person['keypoints']:
            print(f'  {point["name"]:<16} x={point["x"]:8.1f}  y={point["y"]:8.1f}  score={point["score"]:.3f}')
    if args.out:
        print(f'wrote {args.out}')
    return 0


def _draw_people(model: HRNetPose, image: Any, result: dict[str, Any], threshold: float) -> Any:
    skeleton = model.keypoint_info.skeleton if model.keypoint_info else ()
    return draw_pose(image, result['keypoints'], result['scores'], skeleton, threshold)


def _class_shares(model: HRNetSeg, labels: torch.Tensor) -> list[dict[str, Any]]:
    counts = torch.bincount(labels.flatten(), minlength=model.num_classes)
    return [
        dict(label=label, name=model.class_names[label], fraction=round(count / labels.numel(), 6))
        for label, count in sorted(enumerate(counts.tolist()), key=lambda item: -item[1]) if count
    ]


def _draw_mask(model: HRNetSeg, image: Any, labels: torch.Tensor, alpha: float) -> Any:
    return draw_legend(overlay_labels(image, labels, model.palette, alpha), labels, model.class_names, model.palette)


def run_segment(args: argparse.Namespace) -> int:
    """Print the share of each predicted class (and draw the colour mask with a legend)."""
    _check_source(args.image)
    if not 0.0 <= args.alpha <= 1.0:
        raise CliError(f'--alpha must be in [0, 1], got {args.alpha}')
    args.scales = flat_scales(args.scales)
    _check_outputs(args)
    model = _load(create_seg_model, args, align_corners=args.align_corners, dataset=args.dataset)
    if Path(args.image).is_dir() or is_video(args.image):
        frames = _SourceFrames(Path(args.image))
        results = segment_frames(model, frames, args.scales, args.flip, args.window)
        return _run_frames(args, frames, results,
                           lambda frame, result: dict(classes=_class_shares(model, result['labels'])),
                           lambda frame, result: _draw_mask(model, frame.image, result['labels'], args.alpha))
    result = _predict(model, args, scales=args.scales, flip=args.flip, window=args.window,
                      progress=not args.no_progress)
    labels = result['labels']
    classes = _class_shares(model, labels)
    if args.out:
        _save(_draw_mask(model, to_pil(args.image), labels, args.alpha), args.out)
    if args.json:
        print_json(json.dumps(dict(image=args.image, checkpoint=args.checkpoint, size=list(labels.shape),
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


class _SourceFrames:
    """The frames of a folder or video, remembering those read but not yet reported, so that an error met while
    running them names the image file (or video frame) it came from."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.pending: list[Frame] = []

    def __iter__(self) -> Iterator[Frame]:
        for frame in read_frames(self.source):
            self.pending.append(frame)
            yield frame

    def reported(self, frame: Frame) -> None:
        self.pending = [f for f in self.pending if f.index != frame.index]

    def where(self) -> str:
        """The file (or video frame) being run; the frames batched together when it could be any of them."""
        if not self.pending:
            return str(self.source)
        if is_video(self.source):
            names = [f'{self.source} frame {f.index}' for f in self.pending]
        else:
            files = list_images(self.source)
            names = [str(files[f.index]) for f in self.pending]
        if len(names) == 1:
            return names[0]
        return f'one of {len(names)} frames run together ({names[0]} ... {names[-1]})'


def _run_frames(args: argparse.Namespace, frames: _SourceFrames, results: Any, describe: Any, draw: Any) -> int:
    """Every frame of a folder or video: a line (or JSON line) each, and with --out the drawn pictures and JSON."""
    source = Path(args.image)
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise CliError(f'--out must be a directory for a folder or video source, {out} is a file')
        check_writable(out / f'{source.stem}.json')  # makes the folder; a read-only one is found before the work
    count = 0
    try:
        if out is not None and is_video(source):
            with (write_video(out / f'{source.stem}.mp4', video_fps(source)) as video,
                  atomic_path(out / f'{source.stem}.jsonl') as partial, partial.open('w') as lines):
                for frame, result in results:
                    record = _record(frame, describe(frame, result))
                    video.write(draw(frame, result))
                    lines.write(json.dumps(record) + '\n')
                    count += _report(args, record)
                    frames.reported(frame)
        else:
            for frame, result in results:
                record = _record(frame, describe(frame, result))
                if out is not None:
                    _save(draw(frame, result), str(out / f'{frame.name}.png'))
                    write_json(out / f'{frame.name}.json', record)
                count += _report(args, record)
                frames.reported(frame)
    except (UnreadableImageError, UnreadableVideoError) as error:
        raise CliError(str(error)) from error
    except ImportError as error:
        raise CliError(str(error)) from error
    except ValueError as error:
        raise CliError(f'cannot run on {frames.where()}: {error_message(error)}') from error
    if not args.json:
        print(f'{source}: {count} frame(s)' + (f', wrote {out}' if out is not None else ''))
    return 0


def _record(frame: Frame, described: dict[str, Any]) -> dict[str, Any]:
    return dict(frame=frame.name, index=frame.index, size=[frame.image.height, frame.image.width], **described)


def _report(args: argparse.Namespace, record: dict[str, Any]) -> int:
    if args.json:
        print_json(json.dumps(record))
    elif 'people' in record:
        print(f'{record["frame"]}: {len(record["people"])} person box(es)')
    else:
        top = ', '.join(f'{c["name"]} {100 * c["fraction"]:.1f} %' for c in record['classes'][:3])
        print(f'{record["frame"]}: {top}')
    return 1
