"""``python -m hub_upload convert|verify|push|batch``: publish HRNet checkpoints as Hugging Face repos (classifiers as
timm repos; the official pose and segmentation models as timm_hrnet repos)."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .names import (
    CLASSIFICATION,
    INTERPOLATIONS,
    SOURCES,
    TASK_ARCHITECTURES,
    TASK_LAYOUTS,
    TASK_METRICS,
    TASKS,
    WEIGHTS_NAME,
    validate_repo_id,
    validate_repo_name,
)
from .push import push_dir, read_weights_metadata

if TYPE_CHECKING:
    from timm_hrnet.checkpoints import Checkpoint

    from .classifier import ClassifierOptions
    from .task_repos import TaskOptions

MANIFEST_DIR = Path(__file__).resolve().parent / 'manifests'
MIN_INPUT_SIZE = 32  # timm_hrnet.hrnet.MIN_INPUT_SIZE, spelled out so that --help starts without torch
CACHE_HELP = 'download cache (default: $XDG_CACHE_HOME or ~/.cache, then timm_hrnet/sources)'


def _manifest_path(name: str) -> Path:
    """A manifest path, or the name of one shipped in hub_upload/manifests (e.g. mmpretrain_hrnet)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = {p.stem: p for p in MANIFEST_DIR.glob('*.toml')} | {p.stem: p for p in MANIFEST_DIR.glob('*.yaml')}
    if name in shipped:
        return shipped[name]
    raise FileNotFoundError(f"manifest not found: '{name}' (shipped manifests: {', '.join(sorted(shipped))})")


def _argument_type(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a checker raising ValueError, so that bad values fail at parse time with its message."""
    def parse(text: str) -> Any:
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e
    parse.__name__ = check.__name__.lstrip('_')
    return parse


def _size(text: str) -> int:
    value = int(text) if re.fullmatch(r'\d+', text.strip()) else -1
    if value < MIN_INPUT_SIZE:
        raise ValueError(f'expected an integer of at least {MIN_INPUT_SIZE} (HRNet needs one pixel at stride 32), '
                         f'got {text!r}')
    return value


def _input_size(text: str) -> int | tuple[int, int]:
    """N (N x N) or HEIGHTxWIDTH (pose crops such as 256x192), each at least 32."""
    parts = text.lower().split('x')
    if len(parts) == 1:
        return _size(text)
    if len(parts) != 2:
        raise ValueError(f'expected N or HEIGHTxWIDTH such as 256x192, got {text!r}')
    return _size(parts[0]), _size(parts[1])


def _boolean(text: str) -> bool:
    if text.lower() not in ('true', 'false'):
        raise ValueError(f'expected true or false, got {text!r}')
    return text.lower() == 'true'


_ALL_METRICS = sorted({name for names in TASK_METRICS.values() for name in names})


def _metric(text: str) -> tuple[str, float]:
    """NAME=VALUE: a published result in percent, e.g. AP=74.4 or mIoU=80.9."""
    name, equals, value = text.partition('=')
    if not equals or name.strip() not in _ALL_METRICS:
        raise ValueError(f"expected NAME=VALUE with NAME one of {', '.join(_ALL_METRICS)}, got {text!r}")
    return name.strip(), _float_in(value, 0, 100, include_low=True)


def _positive_int(text: str) -> int:
    value = int(text) if re.fullmatch(r'\d+', text.strip()) else 0
    if value < 1:
        raise ValueError(f'expected a positive integer, got {text!r}')
    return value


def _float_in(text: str, low: float, high: float, include_low: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (low <= value if include_low else low < value) and value <= high):
        bracket = '[' if include_low else '('
        raise ValueError(f'expected a number in {bracket}{low:g}, {high:g}], got {text!r}')
    return value


def _crop_pct(text: str) -> float:
    return _float_in(text, 0, 1, include_low=False)


def _tolerance(text: str) -> float:
    return _float_in(text, 0, math.inf, include_low=True)


def _sha256(text: str) -> str:
    if not re.fullmatch(r'[0-9a-fA-F]{8,64}', text.strip()):
        raise ValueError(f'expected 64 hex digits (or a prefix of at least 8), got {text!r}')
    return text.strip().lower()


def _repo_owner(text: str) -> str:
    return validate_repo_name(text, 'repo owner')


size, positive_int, crop_pct, tolerance, sha256, repo_id_type, repo_owner_type = map(
    _argument_type, (_size, _positive_int, _crop_pct, _tolerance, _sha256, validate_repo_id, _repo_owner))
input_size_type, boolean, metric = map(_argument_type, (_input_size, _boolean, _metric))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, except where there is none to show (None, False).

    The same as timm_hrnet.tools.cli_common.HelpFormatter, which cannot be imported here without loading torch.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or '%(default)' in (action.help or ''):
            return action.help or ''
        return super()._get_help_string(action)


# options that describe only one kind of checkpoint; given for the other kind they are an error, not ignored
_CLASSIFIER_OPTIONS = ('model', 'interpolation', 'crop_pct', 'test_input_size', 'test_crop_pct', 'atol')
_TASK_OPTIONS = ('align_corners', 'metric', 'eval_split', 'eval_protocol', 'rtol')


def _refuse(args: argparse.Namespace, options: Sequence[str], what: str) -> None:
    given = [f'--{name.replace("_", "-")}' for name in options if getattr(args, name) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to {what}")


def _checkpoint_task(args: argparse.Namespace, checkpoint: Checkpoint) -> str:
    """--task, or what the checkpoint's keys say it is; a classifier needs --model, a task model must not get one."""
    if args.task != 'auto':
        return args.task
    found = checkpoint.task
    if found in TASK_ARCHITECTURES:
        if args.model is not None:
            raise ValueError(f"'{args.src}' is an HRNet {found} checkpoint, whose architecture is read from its "
                             'tensors: leave out --model (or pass --task classification)')
        return found
    if args.model is None:
        what = 'a classification checkpoint' if found == CLASSIFICATION else (
            'not an HRNet pose or segmentation checkpoint (no final_layer / last_layer head)')
        raise ValueError(f"'{args.src}' is {what}: pass --model with the classifier variant, e.g. hrnet_w18")
    return CLASSIFICATION


def _convert(args: argparse.Namespace) -> int:
    from timm_hrnet.download import resolve_checkpoint

    from .source import checkpoint_argument, read_source
    from .stage import convert

    fetched = resolve_checkpoint(checkpoint_argument(args.src), args.sha256, args.cache_dir, allow_http=args.allow_http,
                                 require_hash=True)
    source = read_source(fetched)  # read once: the task is told by it, the conversion takes it as read
    source_url = fetched.url if urlparse(fetched.url or '').scheme in ('http', 'https') else None
    task = _checkpoint_task(args, source.checkpoint)
    if task == CLASSIFICATION:
        _refuse(args, _TASK_OPTIONS, 'classification checkpoints')
        options, overridden = _classifier_options(args, source_url)
    else:
        _refuse(args, _CLASSIFIER_OPTIONS, f'{task} checkpoints')
        if args.source not in ('auto', *TASK_LAYOUTS[task]):
            raise ValueError(f"--source {args.source} does not apply to {task} checkpoints (layouts: "
                             f"{', '.join(TASK_LAYOUTS[task])})")
        options, overridden = _task_options(args, source_url, task), ''
    result = convert(source, args.out, options, force=args.force, repo_id=args.repo_id,
                     verify_image_size=args.image_size)
    print(result.report.summary())
    for name, nbytes in result.files.items():
        print(f'  {result.out_dir / name}  {nbytes} bytes')
    if task == CLASSIFICATION:
        print(f'preprocessing in config.json: {result.preprocessing_origin}'
              + (f'; overridden by {overridden}' if overridden else ''))
    else:
        print(f'config.json: {result.preprocessing_origin}')
    what = {CLASSIFICATION: 'classes', 'pose': 'joints'}.get(task, 'classes')
    print(f'converted {args.src} -> {result.out_dir} ({result.architecture}, {result.num_classes} {what})')
    return 0


def _classifier_options(args: argparse.Namespace, source_url: str | None) -> tuple[ClassifierOptions, str]:
    """The classifier's options, and the preprocessing options given (for the report)."""
    from .classifier import ClassifierOptions
    from .model_card import CardFacts

    if args.model is None:
        raise ValueError('--model is needed for a classification checkpoint (the variant, e.g. hrnet_w18)')
    input_size = args.input_size
    if isinstance(input_size, tuple):
        if input_size[0] != input_size[1]:
            raise ValueError(f'--input-size {input_size[0]}x{input_size[1]}: a classifier takes N (N x N); HxW is '
                             'for pose checkpoints')
        input_size = input_size[0]
    overrides = dict(input_size=input_size, interpolation=args.interpolation, crop_pct=args.crop_pct,
                     test_input_size=args.test_input_size, test_crop_pct=args.test_crop_pct)
    facts = CardFacts(source=args.source, license=args.license, dataset=args.dataset, source_url=source_url)
    options = ClassifierOptions(args.model, args.source, facts, overrides, 1e-4 if args.atol is None else args.atol,
                                args.num_classes)
    return options, ', '.join(f'--{key.replace("_", "-")}' for key, value in overrides.items() if value is not None)


def _task_options(args: argparse.Namespace, source_url: str | None, task: str) -> TaskOptions:
    from .model_card import TaskFacts
    from .task_repos import TaskOptions

    input_size = (args.input_size, args.input_size) if isinstance(args.input_size, int) else args.input_size
    facts = TaskFacts(license=args.license, dataset=args.dataset, source_url=source_url,
                      metrics=tuple(dict(args.metric or ()).items()), eval_split=args.eval_split,
                      eval_protocol=args.eval_protocol)
    return TaskOptions(task, args.source, facts, input_size, args.align_corners, args.num_classes,
                       1e-4 if args.rtol is None else args.rtol)


def _verify(args: argparse.Namespace) -> int:
    from timm_hrnet.download import is_url, resolve_checkpoint

    from .source import checkpoint_argument
    from .verify import verify_dir

    against = None if args.against is None else checkpoint_argument(args.against)
    if against is not None and is_url(against):  # downloaded against the digest the repo records
        recorded = read_weights_metadata(args.dir / WEIGHTS_NAME).get('source_sha256')
        against = resolve_checkpoint(against, recorded, args.cache_dir, allow_http=args.allow_http, require_hash=True)
    report = verify_dir(args.dir, against=against, source=args.source, atol=args.atol, rtol=args.rtol,
                        image_size=args.image_size)
    print(report.summary())
    return 0 if report.ok else 1


def _push(args: argparse.Namespace) -> int:
    url = push_dir(
        args.dir, args.repo_id, private=args.private, revision=args.revision, create_pr=args.create_pr,
        dry_run=args.dry_run, overwrite_weights=args.overwrite_weights,
    )
    if url:
        print(f'pushed {args.dir} -> {url}')
    return 0


def _batch(args: argparse.Namespace) -> int:
    from .batch import format_summary, run_batch

    outcomes = run_batch(
        _manifest_path(args.manifest), args.out_root, args.cache_dir or _default_cache_dir(), push=args.push,
        restage=args.restage, overwrite_weights=args.overwrite_weights, allow_http=args.allow_http,
        verify_image_size=args.image_size, repo_owner=args.repo_owner, checkpoint_dir=args.checkpoint_dir,
    )
    print(format_summary(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


def _default_cache_dir() -> Path:
    from timm_hrnet.download import default_cache_dir

    return default_cache_dir()


def _add_download_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--cache-dir', type=Path, help=CACHE_HELP)
    parser.add_argument('--allow-http', action='store_true',
                        help='allow plain http:// downloads (no transport security; the sha256 check still applies)')


def _add_image_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--image-size', type=size, help="verification image size (default: the config's input size)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m hub_upload', description=__doc__, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)

    convert = command('convert', 'convert a checkpoint (classifier, pose or segmentation) into a verified repo '
                      'directory')
    convert.add_argument('src', help='source checkpoint: a path or an https URL (.pth/.pt/.bin/.ckpt or .safetensors), '
                         'or the output folder of timm-hrnet train-pose / train-seg (its config.json states the input '
                         'size, align_corners and label set)')
    convert.add_argument('--model', help='classifiers: target variant, e.g. hrnet_w18 or hrnet_w48_ssld, optionally '
                         'with a pretrained tag (hrnet_w18_ssld.paddle_in1k) whose preprocessing is then the default; '
                         'pose and segmentation checkpoints take their architecture from their tensors')
    convert.add_argument('--out', required=True, type=Path, help='repo directory to create')
    convert.add_argument('--task', choices=('auto', *TASKS), default='auto',
                         help='what the checkpoint is (auto: from its keys)')
    convert.add_argument('--source', choices=SOURCES, default='auto', help='checkpoint layout (auto: detect)')
    convert.add_argument('--sha256', type=sha256, help="the source's sha256 (a URL needs it unless its file name "
                         'carries a torch.hub-style hash prefix; publishing needs the full 64 digits)')
    _add_download_options(convert)
    convert.add_argument('--repo-id', type=repo_id_type,
                         help="ORG/NAME the card's usage snippets refer to (default: YOUR_ORG/<--out's name>)")
    convert.add_argument('--license', default='mit', help='license of the weights for the card')
    convert.add_argument('--dataset', help='what the weights were trained or fine-tuned on, for the card (default: '
                         'imagenet-1k for a 1000-class classifier; pose / segmentation: the dataset of the label set, '
                         'e.g. coco, cityscapes; else not stated)')
    convert.add_argument('--num-classes', type=positive_int,
                         help="the classifier's class count (checked); pose: joints, segmentation: classes")
    convert.add_argument('--atol', type=tolerance, help='classifiers: verification tolerance on logits (default 1e-4)')
    convert.add_argument('--rtol', type=tolerance, help='pose / segmentation: verification tolerance on the relative '
                         'max difference (default 1e-4)')
    convert.add_argument('--force', action='store_true',
                         help='replace an existing --out that hub_upload staged and nobody changed (nothing else)')
    preprocessing = convert.add_argument_group(
        'preprocessing', "the source's evaluation preprocessing for config.json (default: a --model tag's cfg, else "
        "the pipeline of the checkpoint's source (mmpretrain, official), else the model's registered cfg)")
    preprocessing.add_argument('--input-size', type=input_size_type, metavar='N|HxW',
                               help='input resolution N x N; pose: the crop size HxW the model was trained at (needed '
                               'unless the file name says it, e.g. ..._384x288.pth)')
    preprocessing.add_argument('--interpolation', choices=INTERPOLATIONS, help='resize interpolation')
    preprocessing.add_argument('--crop-pct', type=crop_pct, help='center crop fraction: resize to N / crop-pct')
    preprocessing.add_argument('--test-input-size', type=size, metavar='N',
                               help='resolution the published accuracy was measured at, if not --input-size')
    preprocessing.add_argument('--test-crop-pct', type=crop_pct, help='crop fraction at --test-input-size')
    tasks = convert.add_argument_group('pose and segmentation')
    tasks.add_argument('--align-corners', type=boolean, metavar='{true,false}',
                       help="segmentation: the training config's MODEL.ALIGN_CORNERS (needed unless the class count is "
                       "a released model's: 19, 20, 59, 60 false; 150, 171 true)")
    tasks.add_argument('--metric', type=metric, action='append', metavar='NAME=VALUE',
                       help='a published result for the card, in percent (repeatable): pose AP, AP50, AP75, APm, APl, '
                       'AR, PCKh; segmentation mIoU')
    tasks.add_argument('--eval-split', help='the split the results were measured on, e.g. val2017, val')
    tasks.add_argument('--eval-protocol', help='how they were measured, e.g. "flip test" or "multi-scale, flip"')
    _add_image_size(convert)
    convert.set_defaults(run=_convert)

    verify = command('verify', 'compare a repo directory with its source checkpoint through independent code')
    verify.add_argument('dir', type=Path, help='repo directory staged by convert or batch')
    verify.add_argument('--against', help="source checkpoint, a path, a training run's output folder or an https URL "
                        "(default: the repo's own weights through timm's built-in HRNet, which does not check the "
                        'conversion)')
    verify.add_argument('--source', choices=SOURCES, default='auto', help='layout of --against (auto: detect)')
    _add_download_options(verify)
    verify.add_argument('--atol', type=tolerance, help='classifier repos: tolerance on logits (default 1e-4)')
    verify.add_argument('--rtol', type=tolerance, help='pose / segmentation repos: tolerance on the relative max '
                        'difference (default 1e-4)')
    _add_image_size(verify)
    verify.set_defaults(run=_verify)

    push = command('push', 'upload a repo directory to the Hugging Face Hub')
    push.add_argument('dir', type=Path, help='repo directory staged by convert or batch')
    push.add_argument('--repo-id', required=True, type=repo_id_type, help='ORG/NAME on the Hub')
    push.add_argument('--private', action='store_true', help='create the repo private (an existing public repo is an '
                      'error, not made private)')
    push.add_argument('--revision', help='branch to push to (created from main when missing)')
    push.add_argument('--create-pr', action='store_true', help='open a pull request instead of committing')
    push.add_argument('--dry-run', action='store_true', help='list what would be uploaded where, no network')
    push.add_argument('--overwrite-weights', action='store_true', help='replace weights already in the repo')
    push.set_defaults(run=_push)

    batch = command('batch', 'download, convert, verify, stage (and push) a manifest')
    batch.add_argument('manifest', help='TOML/YAML manifest path or a shipped manifest name (mmpretrain_hrnet, '
                       'official_pose_seg)')
    batch.add_argument('--out-root', type=Path, default=Path('hub_repos'), help='where repo directories go')
    batch.add_argument('--checkpoint-dir', type=Path, help="where the manifest's relative `file`s are (default: next "
                       'to the manifest), e.g. the folder holding the official pose / segmentation downloads')
    _add_download_options(batch)
    batch.add_argument('--push', action='store_true', help='push each verified repo (needs full sha256s)')
    batch.add_argument('--repo-owner', type=repo_owner_type,
                       help="publish under this user / organization instead of the manifest's")
    batch.add_argument('--restage', action='store_true',
                       help='convert again into directories hub_upload staged before (nothing else is replaced)')
    batch.add_argument('--overwrite-weights', action='store_true', help='with --push: replace weights already on the '
                       'Hub')
    _add_image_size(batch)
    batch.set_defaults(run=_batch)
    return parser


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == 'batch' and args.overwrite_weights and not args.push:
        parser.error('--overwrite-weights needs --push')
    try:
        return args.run(args)
    except KeyError as e:  # a field missing from a file the user pointed at; str(KeyError) is only the quoted key
        print(f'error: missing field {e}', file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as e:  # bad input, files, downloads, Hub and verify failures
        print(f'error: {_one_line(e)}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())

