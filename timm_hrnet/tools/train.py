"""`timm-hrnet train-pose` and `timm-hrnet train-seg`: the command-line face of `timm_hrnet.tasks.training`, on one
process or under `torchrun --nproc_per_node N -m timm_hrnet train-...` (rank 0 prints and writes the files).

Every training option defaults to the official recipe (`--help` shows it; docs/training.md explains it). User
errors (bad data, unknown variants, missing files) print one line on stderr and exit with code 2.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from timm_hrnet.checkpoints import SEG_HEADS
from timm_hrnet.tasks.datasets import SEG_DATASETS
from timm_hrnet.tasks.label_maps import LABEL_FORMATS
from timm_hrnet.tasks.training import (
    POSE_RECIPE,
    SEG_RECIPE,
    PoseAugmentation,
    Recipe,
    SegAugmentation,
    TrainResult,
    train_pose,
    train_seg,
)
from timm_hrnet.tasks.training.config import AMP_MODES, CHECKPOINTING_MODES, SCHEDULES, default_workers
from timm_hrnet.tasks.training.losses import CITYSCAPES_CLASS_WEIGHTS
from timm_hrnet.tasks.training.samples import BAD_SAMPLE_POLICIES
from timm_hrnet.tools.cli_common import (
    CliError,
    HelpFormatter,
    add_codec_argument,
    non_negative_int,
    positive_int,
    print_json,
)
from timm_hrnet.tools.task_cli import _boolean, _size_hw

__all__ = ['add_pose_parser', 'add_seg_parser', 'run_pose', 'run_seg']

# argparse destinations that are TrainConfig fields under the same name
_CONFIG_FIELDS = ('epochs', 'batch_size', 'workers', 'optimizer', 'lr', 'weight_decay', 'momentum', 'schedule',
                  'lr_steps', 'lr_factor', 'poly_power', 'warmup_steps', 'amp', 'compile', 'grad_checkpointing',
                  'channels_last', 'ema_decay', 'sync_bn', 'freeze_bn', 'seed', 'checkpoint_every', 'eval_every',
                  'max_steps', 'resume', 'log_every', 'device', 'tensorboard', 'on_bad_sample', 'overwrite')


def _numbers(kind: type) -> Any:
    """argparse type: comma-separated numbers of `kind`."""
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(part) for part in text.split(',') if part.strip())
        except ValueError as error:
            raise argparse.ArgumentTypeError(f'expected comma-separated numbers, got {text!r}') from error
    return parse


def _class_weights(text: str) -> tuple[float, ...]:
    """argparse type: 'cityscapes' (the official weights) or comma-separated numbers."""
    return CITYSCAPES_CLASS_WEIGHTS if text == 'cityscapes' else _numbers(float)(text)


def _training_arguments(parser: argparse.ArgumentParser, recipe: Recipe, init: str, what: str) -> None:
    """The options every task has; None defaults come from `recipe`."""
    start = parser.add_argument_group('where training starts')
    start.add_argument('--init', default=init,
                       help=f'an hrnet_* variant (timm tag optional: its ImageNet classifier\'s trunk) or a {what} '
                            'checkpoint to fine-tune (path or https URL)')
    start.add_argument('--scratch', action='store_true', help='a variant without the ImageNet trunk weights')
    start.add_argument('--pretrained-file', help="the ImageNet classifier's weights as a local file (offline)")
    run = parser.add_argument_group('run')
    run.add_argument('--output', '-o', default='train-output', help='folder of the log, training state and model')
    run.add_argument('--resume', nargs='?', const='auto', metavar='STATE',
                     help='continue a run: bare --resume takes OUTPUT/last.pth if it exists, or name a state file')
    run.add_argument('--overwrite', action='store_true',
                     help='start over in an OUTPUT that holds a run (its log, state and model are removed first); '
                          'without it such a folder is refused')
    run.add_argument('--max-steps', type=positive_int, help='stop after this many steps in all (resume later)')
    run.add_argument('--checkpoint-every', type=non_negative_int, default=0,
                     help='write OUTPUT/last.pth every N steps (0: after every epoch)')
    run.add_argument('--eval-every', type=non_negative_int, default=1,
                     help='evaluate on the validation split every N epochs (0: never)')
    run.add_argument('--log-every', type=positive_int, default=20, help='steps per log line')
    run.add_argument('--device', help="default: cuda (this rank's GPU under torchrun) when available, else cpu")
    run.add_argument('--workers', type=non_negative_int, default=default_workers(),
                     help='DataLoader worker processes (default: the usable cores, at most 4)')
    run.add_argument('--seed', type=int, default=0, help='data order, augmentation and initial weights')
    run.add_argument('--no-progress', action='store_true', help='no progress bar')
    run.add_argument('--tensorboard', action=argparse.BooleanOptionalAction,
                     help='TensorBoard scalars in OUTPUT/tensorboard (default: when installed)')
    run.add_argument('--on-bad-sample', choices=BAD_SAMPLE_POLICIES, default='error',
                     help='bad annotations, missing or corrupt images, bad label values: stop with an error naming '
                          'them, or skip them (counted in the log)')
    run.add_argument('--json', action='store_true', help='print the result as JSON')
    optim = parser.add_argument_group('optimisation (defaults: the official recipe)')
    optim.add_argument('--epochs', type=positive_int, help=f'default {recipe.epochs}')
    optim.add_argument('--batch-size', type=positive_int,
                       help=f'per process (global batch = this x processes); default {recipe.batch_size}')
    optim.add_argument('--optimizer', help=f"a timm optimizer name ('momentum': SGD with momentum); default "
                                           f'{recipe.optimizer}')
    optim.add_argument('--lr', type=float, help=f'default {recipe.lr:g}')
    optim.add_argument('--weight-decay', type=float, help=f'default {recipe.weight_decay:g}')
    optim.add_argument('--momentum', type=float, default=0.9, help='SGD momentum')
    optim.add_argument('--schedule', choices=SCHEDULES, help=f'per step; default {recipe.schedule}')
    steps = ', '.join(f'{f:.3g}' for f in recipe.lr_steps)
    optim.add_argument('--lr-steps', type=_numbers(int), metavar='E1,E2',
                       help='epochs of the step schedule' + (f'; default {steps} of the epochs' if steps else ''))
    optim.add_argument('--lr-factor', type=float, default=0.1, help='step schedule decay factor')
    optim.add_argument('--poly-power', type=float, default=0.9, help='poly schedule power')
    optim.add_argument('--warmup-steps', type=non_negative_int, default=0, help='linear warm-up steps')
    optim.add_argument('--ema-decay', type=float, help='keep an EMA of the weights (e.g. 0.9998); exported instead')
    speed = parser.add_argument_group('speed and memory')
    speed.add_argument('--amp', choices=AMP_MODES, default='none', help='autocast dtype (fp16 with a GradScaler)')
    speed.add_argument('--compile', action='store_true', help='torch.compile the model')
    speed.add_argument('--grad-checkpointing', choices=CHECKPOINTING_MODES, default='none',
                       help='recompute activations in backward (selective: most of the saving, less extra time)')
    speed.add_argument('--channels-last', action='store_true', help='channels_last weights and inputs')
    speed.add_argument('--sync-bn', action='store_true', help='SyncBatchNorm across torchrun processes (CUDA)')
    speed.add_argument('--freeze-bn', action='store_true',
                       help='BatchNorm in eval mode (running statistics; its affine parameters still train)')


def _config_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {name: getattr(args, name) for name in _CONFIG_FIELDS if getattr(args, name) is not None}
    options.update(output_dir=args.output, progress=not args.no_progress)
    return options


def add_pose_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `train-pose` subcommand."""
    parser = subparsers.add_parser(
        'train-pose', help='train / fine-tune a top-down pose model on COCO-format keypoints (works under torchrun)',
        formatter_class=HelpFormatter,
        description='Top-down keypoint training on a COCO keypoint annotation file (any number of joints), the '
                    'official HRNet recipe by default: Adam lr 1e-3, x0.1 at 170/200 of 210 epochs (scaled to '
                    '--epochs), scale / rotation / flip / half-body augmentation, Gaussian heatmaps, joints MSE.')
    data = parser.add_argument_group('data')
    data.add_argument('--annotations', required=True, help='COCO keypoint annotation file of the training split')
    data.add_argument('--images', required=True, help='folder holding the images it names')
    data.add_argument('--val-annotations', help='annotation file of the validation split (AP on its boxes)')
    data.add_argument('--val-images', help='images of the validation split')
    data.add_argument('--keypoints', help='JSON / YAML keypoint set: names, flip_pairs, skeleton, sigmas, '
                                          'upper_body (default: the annotation category; COCO\'s known)')
    data.add_argument('--input-size', type=_size_hw, default=(256, 192), metavar='HxW', help='person crop size')
    data.add_argument('--sigma', type=float, default=2.0, help='target Gaussian sigma in heatmap pixels')
    add_codec_argument(data, "a pose checkpoint's (--init), else official; dark / udp train with their targets and "
                             'crop')
    aug = parser.add_argument_group('augmentation (defaults: official)')
    defaults = PoseAugmentation()
    aug.add_argument('--no-augment', action='store_true', help='crops exactly as inference makes them')
    aug.add_argument('--scale-factor', type=float, default=defaults.scale_factor, help='scale x clip(N(1, f))')
    aug.add_argument('--rotation-factor', type=float, default=defaults.rotation_factor, help='degrees')
    aug.add_argument('--rotation-prob', type=float, default=defaults.rotation_prob)
    aug.add_argument('--flip-prob', type=float, default=defaults.flip_prob)
    aug.add_argument('--half-body-prob', type=float, default=defaults.half_body_prob)
    evaluation = parser.add_argument_group('evaluation')
    evaluation.add_argument('--no-flip-test', action='store_true', help='evaluate without the flip test')
    evaluation.add_argument('--eval-batch-size', type=positive_int, default=32, help='person crops per pass')
    _training_arguments(parser, POSE_RECIPE, 'hrnet_w32', 'pose')
    parser.set_defaults(handler=run_pose)
    return parser


def add_seg_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `train-seg` subcommand."""
    parser = subparsers.add_parser(
        'train-seg', help='train / fine-tune a segmentation model on image / label folders (works under torchrun)',
        formatter_class=HelpFormatter,
        description='Semantic segmentation training on images with label maps (Cityscapes layout or class-index '
                    'PNGs matched by name), the official HRNet recipe by default: SGD momentum 0.9, lr 0.01, '
                    'weight decay 5e-4, poly decay, random scale 0.5-2.1 / 512x1024 crop / flip, cross-entropy '
                    'ignoring 255.')
    data = parser.add_argument_group('data')
    data.add_argument('--images', required=True, help='image folder (Cityscapes: leftImg8bit/train)')
    data.add_argument('--labels', required=True, help='label folder (Cityscapes: gtFine/train)')
    data.add_argument('--val-images', help='validation images (mIoU)')
    data.add_argument('--val-labels', help='validation labels')
    data.add_argument('--label-format', choices=LABEL_FORMATS, default='auto',
                      help='cityscapes: labelIds mapped to the 19 train ids; index: pixel values are classes; '
                           'palette: colours of the dataset palette; auto: by layout and image mode')
    classes = data.add_mutually_exclusive_group()
    classes.add_argument('--dataset', choices=sorted(SEG_DATASETS), help='class names, palette and flip pairs')
    classes.add_argument('--class-names', type=lambda text: tuple(t.strip() for t in text.split(',')),
                         metavar='A,B,...', help='names of the classes 0, 1, ... (generic colours)')
    data.add_argument('--num-classes', type=positive_int,
                      help='default: from --dataset / --class-names, the checkpoint, or 19 for the Cityscapes layout')
    data.add_argument('--ignore-index', type=int, default=255, help='label value that is not trained or evaluated')
    data.add_argument('--reduce-zero-label', action='store_true', help='label 0 is ignored and k is class k-1')
    data.add_argument('--check-labels', action='store_true',
                      help='decode every label map before training (bad values found up front, not mid-epoch)')
    aug = parser.add_argument_group('augmentation (defaults: official)')
    defaults = SegAugmentation()
    aug.add_argument('--crop-size', type=_size_hw, default=(512, 1024), metavar='HxW', help='training crop size')
    aug.add_argument('--no-augment', action='store_true', help='no rescaling or flip (random crops only)')
    aug.add_argument('--scale-range', type=_numbers(float), default=defaults.scale_range, metavar='LOW,HIGH',
                     help='random scale of the long side')
    aug.add_argument('--scale-step', type=float, default=defaults.scale_step, help='scale step (0: uniform)')
    aug.add_argument('--base-size', type=positive_int, help='long side the scale refers to (default: the image\'s)')
    aug.add_argument('--flip-prob', type=float, default=defaults.flip_prob)
    loss = parser.add_argument_group('model and loss')
    loss.add_argument('--head', choices=SEG_HEADS,
                      help="a new model's head: fcn (HRNetV2) or ocr (HRNet + OCR; default: fcn, a checkpoint's own)")
    loss.add_argument('--ocr-channels', type=_numbers(int), default=(512, 256), metavar='MID,KEY',
                      help="a new OCR model's mid / key channels (the official 512,256)")
    loss.add_argument('--aux-weight', type=float, default=0.4,
                      help="weight of an OCR model's auxiliary loss (the official 0.4; the OCR logits' is 1)")
    loss.add_argument('--align-corners', type=_boolean, metavar='{true,false}',
                      help='the model\'s resize rule (default: false for a new model, a checkpoint\'s own)')
    loss.add_argument('--ohem', action='store_true', help='online hard example mining (OhemCrossEntropy)')
    loss.add_argument('--ohem-thresh', type=float, default=0.7, help='OHEM probability threshold')
    loss.add_argument('--ohem-min-kept', type=positive_int, help='OHEM pixels kept per batch (default: the '
                                                                 'official 100000 per 3 x 512 x 1024)')
    loss.add_argument('--class-weights', type=_class_weights, metavar='W0,W1,...|cityscapes',
                      help='per-class loss weights (cityscapes: the official ones)')
    evaluation = parser.add_argument_group('evaluation')
    evaluation.add_argument('--eval-scales', type=_numbers(float), default=(1.0,), metavar='S1,S2',
                            help='multi-scale test')
    evaluation.add_argument('--eval-flip', action='store_true', help='flip test')
    evaluation.add_argument('--eval-window', type=_size_hw, metavar='HxW', help='sliding-window test')
    _training_arguments(parser, SEG_RECIPE, 'hrnet_w48', 'segmentation')
    parser.set_defaults(handler=run_seg)
    return parser


# the library's messages name its Python arguments; a command-line user typed these flags
_FLAGS = (("resume='auto'", '--resume'), ('overwrite=True', '--overwrite'), ('output_dir', '--output'),
          ('on_bad_sample="skip"', '--on-bad-sample skip'),
          ('init=', '--init '), ('pretrained_file', '--pretrained-file'), ('on_bad_sample', '--on-bad-sample'),
          ('max_steps', '--max-steps'))


def in_flag_names(message: str) -> str:
    """A library message with the Python argument names it mentions replaced by the command's flags."""
    for python_name, flag in _FLAGS:
        message = message.replace(python_name, flag)
    return message


def _train(function: Any, *args: Any, **kwargs: Any) -> TrainResult:
    """`function(*args, **kwargs)` with bad data and settings as CliErrors, in flag names."""
    try:
        return function(*args, **kwargs)
    except (ValueError, OSError, ImportError) as error:
        raise CliError(in_flag_names(str(error).strip() or type(error).__name__)) from error


def _report(result: TrainResult, as_json: bool) -> int:
    """Print where the run ended (rank 0 only)."""
    if int(os.environ.get('RANK', '0')) != 0:
        return 0
    summary = dict(finished=result.finished, step=result.step, epoch=result.epoch, output_dir=str(result.output_dir),
                   state_file=str(result.state_file), files=result.files, skipped_samples=result.skipped,
                   final_loss=result.losses[-1] if result.losses else None,
                   metrics={k: v for k, v in result.metrics.items() if isinstance(v, (int, float))})
    if as_json:
        print_json(json.dumps(summary, indent=2))
        return 0
    state = 'finished' if result.finished else 'stopped at --max-steps (resume with --resume)'
    print(f'{state}: step {result.step}, epoch {result.epoch}, final loss {summary["final_loss"]}, '
          f'{result.skipped} samples skipped')
    for key in ('AP', 'AP50', 'AP75', 'AR', 'mIoU', 'aAcc'):
        if key in summary['metrics']:
            print(f'  {key} {100 * summary["metrics"][key]:.2f}')
    for kind, path in result.files.items():
        print(f'wrote {kind}: {path}')
    print(f'training state: {result.state_file}')
    return 0


def run_pose(args: argparse.Namespace) -> int:
    """Train a pose model as the arguments say."""
    augmentation = PoseAugmentation.none() if args.no_augment else PoseAugmentation(
        scale_factor=args.scale_factor, rotation_factor=args.rotation_factor, rotation_prob=args.rotation_prob,
        flip_prob=args.flip_prob, half_body_prob=args.half_body_prob)
    result = _train(
        train_pose, args.annotations, args.images, init=args.init, pretrained=not args.scratch,
        pretrained_file=args.pretrained_file, keypoints=args.keypoints, val_ann_file=args.val_annotations,
        val_image_dir=args.val_images, input_size=args.input_size, sigma=args.sigma, augmentation=augmentation,
        codec=None if args.codec is None else args.codec.spec,
        eval_flip_test=not args.no_flip_test, eval_batch_size=args.eval_batch_size, **_config_options(args))
    return _report(result, args.json)


def run_seg(args: argparse.Namespace) -> int:
    """Train a segmentation model as the arguments say."""
    if len(args.scale_range) != 2:
        raise CliError(f'--scale-range takes LOW,HIGH, got {args.scale_range}')
    try:
        augmentation = SegAugmentation(
            scale_range=(1.0, 1.0) if args.no_augment else args.scale_range,
            scale_step=None if args.no_augment else args.scale_step or None,
            flip_prob=0.0 if args.no_augment else args.flip_prob, base_size=args.base_size)
    except ValueError as error:
        raise CliError(str(error)) from error
    result = _train(
        train_seg, args.images, args.labels, num_classes=args.num_classes, dataset=args.dataset,
        class_names=args.class_names, init=args.init, pretrained=not args.scratch,
        pretrained_file=args.pretrained_file, val_image_dir=args.val_images, val_label_dir=args.val_labels,
        crop_size=args.crop_size, augmentation=augmentation, align_corners=args.align_corners, ohem=args.ohem,
        ohem_threshold=args.ohem_thresh, ohem_min_kept=args.ohem_min_kept, class_weights=args.class_weights,
        ignore_index=args.ignore_index, reduce_zero_label=args.reduce_zero_label, label_format=args.label_format,
        check_labels=args.check_labels, eval_scales=args.eval_scales, eval_flip=args.eval_flip,
        eval_window=args.eval_window, head=args.head, aux_weight=args.aux_weight,
        ocr_channels=args.ocr_channels, **_config_options(args))
    return _report(result, args.json)
