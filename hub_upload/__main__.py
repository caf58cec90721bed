"""``python -m hub_upload convert|verify|push|batch``: publish HRNet checkpoints as timm Hugging Face repos."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .push import push_dir

MANIFEST_DIR = Path(__file__).resolve().parent / 'manifests'
# timm_hrnet.convert.LAYOUT_NAMES spelled out, so that push and --help start without importing torch
SOURCES = ('auto', 'canonical', 'official', 'timm', 'mmpretrain')
# timm.data.transforms' interpolation names, spelled out for the same reason
INTERPOLATIONS = ('bilinear', 'bicubic', 'nearest', 'box', 'hamming', 'lanczos')
DEFAULT_CACHE_DIR = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'timm_hrnet' / 'sources'


def _manifest_path(name: str) -> Path:
    """A manifest path, or the name of one shipped in hub_upload/manifests (e.g. mmpretrain_hrnet)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = {p.stem: p for p in MANIFEST_DIR.glob('*.toml')} | {p.stem: p for p in MANIFEST_DIR.glob('*.yaml')}
    if name in shipped:
        return shipped[name]
    raise FileNotFoundError(f"manifest not found: '{name}' (shipped manifests: {', '.join(sorted(shipped))})")


def _convert(args: argparse.Namespace) -> int:
    from .model_card import CardFacts
    from .stage import Preprocessing, convert_to_dir

    defaults = Preprocessing.for_model(args.model)
    channels = defaults.input_size[0]
    preprocessing = defaults.with_overrides(
        input_size=(channels, args.input_size, args.input_size) if args.input_size else None,
        interpolation=args.interpolation,
        crop_pct=args.crop_pct,
        test_input_size=(channels, args.test_input_size, args.test_input_size) if args.test_input_size else None,
        test_crop_pct=args.test_crop_pct,
    )
    result = convert_to_dir(
        args.src, args.model, args.out, source=args.source, force=args.force, repo_id=args.repo_id,
        facts=CardFacts(source=args.source, license=args.license), preprocessing=preprocessing, atol=args.atol,
        verify_image_size=args.image_size,
    )
    print(result.report.summary())
    for name, size in result.files.items():
        print(f'  {result.out_dir / name}  {size} bytes')
    print(f'converted {args.src} -> {result.out_dir} ({result.architecture}, {result.num_classes} classes)')
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .verify import verify_dir

    report = verify_dir(args.dir, against=args.against, source=args.source, atol=args.atol, image_size=args.image_size)
    print(report.summary())
    return 0 if report.ok else 1


def _push(args: argparse.Namespace) -> int:
    url = push_dir(
        args.dir, args.repo_id, private=args.private, revision=args.revision, create_pr=args.create_pr,
        dry_run=args.dry_run, force=args.force,
    )
    if url:
        print(f'pushed {args.dir} -> {url}')
    return 0


def _batch(args: argparse.Namespace) -> int:
    from .batch import format_summary, run_batch

    outcomes = run_batch(
        _manifest_path(args.manifest), args.out_root, push=args.push, cache_dir=args.cache_dir, force=args.force,
        verify_image_size=args.image_size, repo_owner=args.repo_owner,
    )
    print(format_summary(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


def _add_image_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--image-size', type=int, help="verification image size (default: the config's input size)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m hub_upload', description=__doc__)
    commands = parser.add_subparsers(dest='command', required=True)

    convert = commands.add_parser('convert', help='convert a checkpoint into a verified repo directory')
    convert.add_argument('src', help='source checkpoint (.pth/.pt/.bin/.ckpt or .safetensors)')
    convert.add_argument('--model', required=True, help='target variant, e.g. hrnet_w18 or hrnet_w48_ssld, optionally '
                         'with a pretrained tag (hrnet_w18_ssld.paddle_in1k) whose preprocessing is the default')
    convert.add_argument('--out', required=True, type=Path, help='repo directory to create')
    convert.add_argument('--source', choices=SOURCES, default='auto', help='checkpoint layout (default: detect)')
    convert.add_argument('--repo-id', help='ORG/NAME the card\'s usage snippets refer to (default: derived from --out)')
    convert.add_argument('--license', default='mit', help='license of the weights for the card (default: mit)')
    convert.add_argument('--atol', type=float, default=1e-4, help='verification tolerance on logits')
    convert.add_argument('--force', action='store_true', help='replace an existing --out directory')
    preprocessing = convert.add_argument_group(
        'preprocessing', "the source's evaluation preprocessing for config.json (default: the model's pretrained cfg)")
    preprocessing.add_argument('--input-size', type=int, metavar='N', help='input resolution N x N')
    preprocessing.add_argument('--interpolation', choices=INTERPOLATIONS, help='resize interpolation')
    preprocessing.add_argument('--crop-pct', type=float, help='center crop fraction: resize to N / crop-pct')
    preprocessing.add_argument('--test-input-size', type=int, metavar='N',
                               help='resolution the published accuracy was measured at, if not --input-size')
    preprocessing.add_argument('--test-crop-pct', type=float, help='crop fraction at --test-input-size')
    _add_image_size(convert)
    convert.set_defaults(run=_convert)

    verify = commands.add_parser('verify', help='compare a repo directory with its source checkpoint')
    verify.add_argument('dir', type=Path)
    verify.add_argument('--against', type=Path, help='source checkpoint (default: the repo\'s own weights)')
    verify.add_argument('--source', choices=SOURCES, default='auto', help='layout of --against')
    verify.add_argument('--atol', type=float, default=1e-4)
    _add_image_size(verify)
    verify.set_defaults(run=_verify)

    push = commands.add_parser('push', help='upload a repo directory to the Hugging Face Hub')
    push.add_argument('dir', type=Path)
    push.add_argument('--repo-id', required=True, help='ORG/NAME on the Hub')
    push.add_argument('--private', action='store_true')
    push.add_argument('--revision', help='branch to push to (created when missing)')
    push.add_argument('--create-pr', action='store_true', help='open a pull request instead of committing')
    push.add_argument('--dry-run', action='store_true', help='list what would be uploaded where, no network')
    push.add_argument('--force', action='store_true', help='overwrite weights already in the repo')
    push.set_defaults(run=_push)

    batch = commands.add_parser('batch', help='download, convert, verify, stage (and push) a manifest')
    batch.add_argument('manifest', help='TOML/YAML manifest path or a shipped manifest name (mmpretrain_hrnet)')
    batch.add_argument('--out-root', type=Path, default=Path('hub_repos'), help='where repo directories go')
    batch.add_argument('--cache-dir', type=Path, default=DEFAULT_CACHE_DIR, help='download cache')
    batch.add_argument('--push', action='store_true', help='push each verified repo')
    batch.add_argument('--repo-owner', help='publish under this user / organization instead of the manifest\'s')
    batch.add_argument('--force', action='store_true', help='restage existing directories, overwrite hub weights')
    _add_image_size(batch)
    batch.set_defaults(run=_batch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyError as e:  # a field missing from a file the user pointed at; str(KeyError) is only the quoted key
        print(f'error: missing field {e}', file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as e:  # bad input, missing / existing files, Hub and verify failures
        print(f'error: {e}', file=sys.stderr)
        return 2

if __name__ == '__main__':
    sys.exit(main())
