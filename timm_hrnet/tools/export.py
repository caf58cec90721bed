"""`timm-hrnet export`: a classifier, features_only backbone, pose or segmentation model to ONNX or OpenVINO IR,
checked in its runtime (see `timm_hrnet.export`)."""
from __future__ import annotations

import argparse
import json

from torch import nn

from timm_hrnet.classification import UnknownModelError, get_model
from timm_hrnet.export import DTYPES, FORMATS, ExportError, ExportReport, export
from timm_hrnet.export_choice import AutoChoice, export_auto
from timm_hrnet.outputs import check_not_an_input, check_writable
from timm_hrnet.tasks.pose import create_pose_model
from timm_hrnet.tasks.segmentation import create_seg_model
from timm_hrnet.tools.cli_common import (
    CliError,
    add_codec_argument,
    checkpoint_file,
    error_message,
    image_size,
    load_model_or_fail,
    positive_int,
    print_json,
)

__all__ = ['add_arguments', 'run']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `timm-hrnet export`."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--model', help='classifier or backbone: timm name (tag optional), hf-hub:, local-dir:')
    source.add_argument('--pose', metavar='CHECKPOINT', help='a pose checkpoint (path or URL), any layout')
    source.add_argument('--seg', metavar='CHECKPOINT', help='a segmentation checkpoint (path or URL), any layout')
    parser.add_argument('--checkpoint', help='with --model: weights to load (default: the published ones)')
    parser.add_argument('--allow-http', action='store_true', help='accept a plain http:// checkpoint URL')
    parser.add_argument('--features-only', action='store_true', help='with --model: the multi-scale backbone')
    parser.add_argument('--out', required=True, help='output file (.onnx, or .xml + .bin for openvino)')
    parser.add_argument('--format', choices=FORMATS, default='onnx')
    parser.add_argument('--dtype', choices=(*DTYPES, 'auto'), default='float32',
                        help='auto: export each precision, time them here, keep the fastest within the accuracy '
                             'rule (needs --calibration)')
    parser.add_argument('--calibration', help='int8: a folder of images like the ones the model will see')
    parser.add_argument('--img-size', type=image_size, nargs='+', metavar='SIZE',
                        help='export size: one value (square) or height width; default: the model\'s')
    parser.add_argument('--static', action='store_true', help='fixed batch and size instead of dynamic ones')
    parser.add_argument('--batch-size', type=positive_int, default=1, help='with --static: the fixed batch')
    parser.add_argument('--no-check', action='store_true', help='skip running the file against the model')
    parser.add_argument('--json', action='store_true', help='print the report as JSON')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars during int8 calibration')
    parser.add_argument('--decode', action='store_true',
                        help='with --pose: the graph decodes too; outputs keypoints (N, J, 2) in crop pixels and '
                             'scores (N, J), by the checkpoint\'s codec (no flip test; the crop size is fixed)')
    add_codec_argument(parser, 'with --pose: what the checkpoint says')


def _model(args: argparse.Namespace) -> nn.Module:
    try:
        if args.pose:
            return create_pose_model(checkpoint_file(args.pose, args.allow_http).path, codec=args.codec)
        if args.seg:
            return create_seg_model(checkpoint_file(args.seg, args.allow_http).path)
        if args.features_only:
            if args.checkpoint:
                raise CliError('--features-only takes the published weights; export the classifier for a checkpoint')
            return get_model(args.model, pretrained=True, features_only=True)
        return load_model_or_fail(args.model, args.checkpoint, args.allow_http)
    except UnknownModelError as error:
        raise CliError(str(error)) from error
    except (OSError, ValueError) as error:
        raise CliError(error_message(error)) from error


def _print(report: ExportReport) -> None:
    print(f'wrote {report.path} ({report.format}, {report.dtype}, export size {report.input_size[0]}x'
          f'{report.input_size[1]}, {"dynamic" if report.dynamic else f"static (batch {report.batch_size})"} '
          f'batch{" (fixed size)" if report.outputs == ("keypoints", "scores") else " and size"}, '
          f'outputs {", ".join(report.outputs)})')
    for check in report.checks:
        agreement = '' if check.agreement is None else f', argmax agreement {100 * check.agreement:.2f} %'
        print(f'  {check.size[0]}x{check.size[1]}: max relative difference {check.max_rel_diff:.2e}{agreement}')


def run(args: argparse.Namespace) -> int:
    """Run `timm-hrnet export`."""
    if (args.decode or args.codec is not None) and not args.pose:
        raise CliError('--decode and --codec export a pose model: give --pose CHECKPOINT')
    sources = [s for s in (args.pose, args.seg, args.checkpoint, args.calibration) if s and '://' not in s]
    check_not_an_input(args.out, sources)
    check_writable(args.out)  # a read-only or missing folder is found before the export's minutes
    if args.dtype == 'auto' and args.decode:
        raise CliError('--dtype auto chooses among plain exports; give --dtype with --decode')
    if args.dtype == 'auto' and not args.calibration:
        raise CliError('--dtype auto needs --calibration: a folder of images like the ones the model will see '
                       '(the int8 candidate is calibrated and every candidate judged on them)')
    model = _model(args)
    size = None if args.img_size is None else (args.img_size * 2)[:2]
    choice: AutoChoice | None = None
    try:
        if args.dtype == 'auto':
            choice = export_auto(model, args.out, args.format, input_size=size, dynamic=not args.static,
                                 batch_size=args.batch_size, calibration=args.calibration, check=not args.no_check,
                                 progress=not args.no_progress)
            report = choice.report
        else:
            report = export(model, args.out, args.format, dtype=args.dtype, input_size=size, dynamic=not args.static,
                            batch_size=args.batch_size, calibration=args.calibration, check=not args.no_check,
                            decode=args.decode, progress=not args.no_progress)
    except ExportError as error:
        raise CliError(str(error)) from error
    if choice is not None and not args.json:
        print(f'dtype auto chose {choice.reason}')
    if args.json:
        print_json(json.dumps(dict(
            path=str(report.path), format=report.format, dtype=report.dtype, input_size=list(report.input_size),
            dynamic=report.dynamic, batch_size=report.batch_size, outputs=list(report.outputs),
            checks=[dict(size=list(c.size), max_rel_diff=c.max_rel_diff, agreement=c.agreement)
                    for c in report.checks],
            **({} if choice is None else {'auto': dict(reason=choice.reason, candidates=[
                dict(dtype=c.dtype, seconds_per_call=c.seconds_per_call, agreement=c.agreement, accepted=c.accepted)
                for c in choice.candidates])}),
        ), indent=2))
    else:
        _print(report)
    return 0
