"""The `timm-hrnet` command: predict, validate, models, benchmark, pose, segment.

`predict` lives here; validate.py, model_table.py and benchmark.py each expose `add_arguments(parser)` and
`run(args)`, task_cli.py adds `pose` and `segment`. User errors (missing files, unknown model names, files
that cannot be read or written) print one message on stderr and exit with code 2 (see `main`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from timm_hrnet.classification import UnreadableImageError, build_eval_transform, inference_model, load_rgb_image
from timm_hrnet.tools import benchmark, evaluate, model_table, task_cli, train, validate
from timm_hrnet.tools import export as export_command
from timm_hrnet.tools.cli_common import (
    CliError,
    HelpFormatter,
    crop_fraction,
    device_or_fail,
    error_message,
    image_size,
    load_model_or_fail,
    positive_int,
    print_json,
    stdout_for_json_only,
)

__all__ = ['build_parser', 'main', 'predict']

DEFAULT_PREDICT_MODEL = 'hrnet_w18.ms_in1k'


def _add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('images', nargs='+', metavar='IMAGE', help='image files')
    parser.add_argument('--model', default=DEFAULT_PREDICT_MODEL,
                        help='timm name (tag optional), hf-hub:ORG/REPO, local-dir:DIR or mmpretrain name')
    parser.add_argument('--checkpoint', help='weights in any layout the converter reads, a path or an https URL '
                        '(downloaded once into the cache); default: the published weights')
    parser.add_argument('--allow-http', action='store_true', help='allow a plain http:// --checkpoint URL')
    parser.add_argument('--topk', type=positive_int, default=5,
                        help='classes to print per image (at most the model\'s class count)')
    parser.add_argument('--json', action='store_true', help='print a JSON list instead of text')
    parser.add_argument('--device', help='default: cuda when available, else cpu')
    parser.add_argument('--img-size', type=image_size, help='square input size; default: from the pretrained cfg')
    parser.add_argument('--crop-pct', type=crop_fraction,
                        help='center-crop fraction in (0, 1]; default: from the pretrained cfg')


def predict(args: argparse.Namespace) -> int:
    """Classify each readable image; unreadable ones are reported on stderr and make the exit code 1."""
    device = device_or_fail(args.device)
    paths, images = [], []
    for path in args.images:  # read the images first: a typo in a path should not wait for the weights
        try:
            images.append(load_rgb_image(path))
            paths.append(path)
        except UnreadableImageError as error:
            print(f'skipped {error}', file=sys.stderr)
    if not images:
        raise CliError('none of the images could be read')
    model = load_model_or_fail(args.model, args.checkpoint, args.allow_http)
    transform = build_eval_transform(model, args.img_size, args.crop_pct)
    try:
        predictions = inference_model(model, images, topk=args.topk, device=device, transform=transform)
    except ValueError as error:  # the model refusing this input, e.g. a size the pretrained cfg cannot give
        raise CliError(f'{args.model} cannot run on these inputs: {error}') from error
    if args.json:
        print_json(json.dumps([
            {'path': path, 'pred_label': p['pred_label'], 'pred_score': p['pred_score'], 'pred_class': p['pred_class'],
             'topk': [{'label': label, 'class': name, 'score': score} for label, name, score in p['topk']]}
            for path, p in zip(paths, predictions, strict=True)
        ], indent=2))
    else:
        for path, prediction in zip(paths, predictions, strict=True):
            print(path)
            for rank, (label, name, score) in enumerate(prediction['topk'], start=1):
                print(f'  {rank}. {score:.4f}  {name} ({label})')
    return 1 if len(paths) < len(args.images) else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each subcommand stores its `run` function as `handler`."""
    parser = argparse.ArgumentParser(prog='timm-hrnet', description='HRNet models for timm: everyday tools.',
                                     formatter_class=HelpFormatter)
    subparsers = parser.add_subparsers(dest='command', required=True)
    predict_parser = subparsers.add_parser('predict', help='classify images', description='classify images',
                                           formatter_class=HelpFormatter)
    _add_predict_arguments(predict_parser)
    predict_parser.set_defaults(handler=predict)
    subcommands = {
        'validate': (validate, 'ImageNet-style top-1/top-5 evaluation (works under torchrun)'),
        'models': (model_table, 'table of variants, sizes, GMACs and published accuracies'),
        'benchmark': (benchmark, 'inference throughput and peak memory'),
        'export': (export_command, 'ONNX / OpenVINO export (fused, dynamic size, float or int8), checked'),
    }
    for command, (module, description) in subcommands.items():
        subparser = subparsers.add_parser(command, help=description, description=description,
                                          formatter_class=HelpFormatter)
        module.add_arguments(subparser)
        subparser.set_defaults(handler=module.run)
    task_cli.add_pose_parser(subparsers)
    task_cli.add_segment_parser(subparsers)
    evaluate.add_pose_parser(subparsers)
    evaluate.add_seg_parser(subparsers)
    train.add_pose_parser(subparsers)
    train.add_seg_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `timm-hrnet` console script; returns the exit code.

    The one error path of every subcommand: a user error (`CliError`), bad input the library refuses
    (`ValueError`), a file that cannot be read or written (`OSError`) and a missing optional package
    (`ImportError`) print the whole message after the command's name on stderr and exit with 2, without a
    traceback (`TIMM_HRNET_TRACEBACK=1` shows it).
    """
    args = build_parser().parse_args(argv)
    try:
        with stdout_for_json_only(getattr(args, 'json', False)):
            return args.handler(args)
    except (CliError, ValueError, OSError, ImportError) as error:
        if os.environ.get('TIMM_HRNET_TRACEBACK'):
            raise
        message = error_message(error)
        if args.command.startswith('train-'):
            message = train.in_flag_names(message)
        print(f'timm-hrnet {args.command}: error: {message}', file=sys.stderr)
        return 2

